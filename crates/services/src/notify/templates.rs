//! Message templates: files named `<name>.txt` in the templates directory, rendered
//! with minijinja. A template's first line may be `Subject: …` (itself a template).

use anyhow::Context;
use minijinja::Environment;
use std::path::Path;

/// The templates every deployment needs.
pub const REQUIRED: &[&str] =
    &["welcome", "login_notice", "security_alert", "security_alert_sms", "registration_attempt"];

pub struct Templates {
    env: Environment<'static>,
}

/// A rendered message.
pub struct Rendered {
    pub subject: Option<String>,
    pub body: String,
}

impl Templates {
    /// Loads every `*.txt` in `dir`; fails, naming the file, if one does not parse or a required one is missing.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let mut env = Environment::new();
        let entries = std::fs::read_dir(dir).with_context(|| format!("reading templates from {}", dir.display()))?;
        for entry in entries {
            let path = entry?.path();
            let (Some(name), Some("txt")) =
                (path.file_stem().and_then(|s| s.to_str()), path.extension().and_then(|s| s.to_str()))
            else {
                continue;
            };
            let source = std::fs::read_to_string(&path)?;
            env.add_template_owned(name.to_string(), source).with_context(|| format!("template {}", path.display()))?;
        }
        for name in REQUIRED {
            anyhow::ensure!(env.get_template(name).is_ok(), "template {name}.txt is missing from {}", dir.display());
        }
        Ok(Templates { env })
    }

    /// Renders template `name` with `data`.
    pub fn render(&self, name: &str, data: &serde_json::Value) -> anyhow::Result<Rendered> {
        let template = self.env.get_template(name).with_context(|| format!("no template named '{name}'"))?;
        let text = template.render(data).with_context(|| format!("rendering template '{name}'"))?;
        let (subject, body) = match text.strip_prefix("Subject: ") {
            Some(rest) => {
                let (subject, body) = rest.split_once('\n').unwrap_or((rest, ""));
                (Some(subject.trim().to_string()), body.trim_start_matches('\n').to_string())
            }
            None => (None, text),
        };
        Ok(Rendered { subject, body })
    }
}

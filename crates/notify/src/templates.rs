//! Message templates, rendered with minijinja. A template's first line may be
//! `Subject: …` (itself a template). The defaults are compiled into the binary;
//! a templates directory (`--templates`) overrides them file by file
//! (`<name>.txt`) and may add new ones.

use anyhow::Context;
use minijinja::Environment;
use std::path::Path;

/// The built-in templates: (name, source).
pub const DEFAULTS: &[(&str, &str)] = &[
    ("welcome", include_str!("../../../templates/notification/welcome.txt")),
    ("login_notice", include_str!("../../../templates/notification/login_notice.txt")),
    ("security_alert", include_str!("../../../templates/notification/security_alert.txt")),
    ("security_alert_sms", include_str!("../../../templates/notification/security_alert_sms.txt")),
    ("registration_attempt", include_str!("../../../templates/notification/registration_attempt.txt")),
    ("notice", include_str!("../../../templates/notification/notice.txt")),
];

/// Writes the built-in templates into `dir` (created if missing) for editing; an
/// existing file is left alone. Returns the paths written.
pub fn write_defaults(dir: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    for (name, source) in DEFAULTS {
        let path = dir.join(format!("{name}.txt"));
        if path.exists() {
            continue;
        }
        std::fs::write(&path, source).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

pub struct Templates {
    env: Environment<'static>,
}

/// A rendered message.
pub struct Rendered {
    pub subject: Option<String>,
    pub body: String,
}

impl Templates {
    /// The built-in templates, then every `*.txt` of `dir` (if given) in place of the
    /// built-in one of its name; fails, naming the file, if one does not parse.
    pub fn load(dir: Option<&Path>) -> anyhow::Result<Self> {
        let mut env = Environment::new();
        for (name, source) in DEFAULTS {
            env.add_template(name, source).with_context(|| format!("built-in template {name}"))?;
        }
        let Some(dir) = dir else {
            return Ok(Templates { env });
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_ins_render_and_a_directory_overrides_file_by_file() {
        let builtin = Templates::load(None).unwrap();
        let data = serde_json::json!({"username": "ada", "email": "ada@example.com", "verification_link": "L"});
        assert!(builtin.render("welcome", &data).unwrap().subject.unwrap().contains("Welcome"));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("welcome.txt"), "Subject: Hi {{ username }}\n\nCustom").unwrap();
        std::fs::write(dir.path().join("extra.txt"), "An extra template").unwrap();
        let custom = Templates::load(Some(dir.path())).unwrap();
        let welcome = custom.render("welcome", &data).unwrap();
        assert_eq!((welcome.subject.as_deref(), welcome.body.as_str()), (Some("Hi ada"), "Custom"));
        assert!(custom.render("login_notice", &data).is_ok(), "templates not overridden fall back to the built-ins");
        assert_eq!(custom.render("extra", &data).unwrap().body, "An extra template");
        std::fs::write(dir.path().join("broken.txt"), "{% if %}").unwrap();
        let err = Templates::load(Some(dir.path())).err().unwrap();
        assert!(format!("{err:#}").contains("broken.txt"), "{err:#}");
    }

    #[test]
    fn the_defaults_are_written_out_without_overwriting() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("welcome.txt"), "mine").unwrap();
        let written = write_defaults(dir.path()).unwrap();
        assert_eq!(written.len(), DEFAULTS.len() - 1);
        assert_eq!(std::fs::read_to_string(dir.path().join("welcome.txt")).unwrap(), "mine");
        Templates::load(Some(dir.path())).unwrap();
    }
}

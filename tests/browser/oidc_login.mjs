// Drives Debian's Chromium (headless, through Playwright) over perfect21's login
// pages for tests/oidc.rs: prints one JSON line per step, and waits on stdin for
// the logout URL once the test has exchanged the codes.
import { chromium } from 'playwright-core';
import readline from 'node:readline';

const env = process.env;
const browser = await chromium.launch({
  executablePath: env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox'],
});
const page = await (await browser.newContext()).newPage();
const emit = (report) => process.stdout.write(JSON.stringify(report) + '\n');
const input = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const back = (path) => (url) => url.href.startsWith(env.CALLBACKS + path);
const loginFormShown = async () => (await page.locator('#identifier').count()) > 0;

try {
  // Client A: the sign-in form, then the second factor, then back at the client.
  await page.goto(env.AUTHORIZE_A);
  const loginTitle = await page.title();
  await page.screenshot({ path: env.SCREENSHOT, fullPage: true });
  await page.getByLabel('Email or username').fill(env.USERNAME);
  await page.getByLabel('Password').fill(env.PASSWORD);
  await Promise.all([page.waitForURL(/\/oauth2\/authorize$/), page.getByRole('button', { name: 'Sign in' }).click()]);
  const mfaTitle = await page.title();
  await page.getByLabel(/authenticator app/).fill(env.TOTP_CODE);
  await Promise.all([page.waitForURL(back('/cb-a')), page.getByRole('button', { name: 'Verify' }).click()]);
  emit({ step: 'a', login_title: loginTitle, mfa_title: mfaTitle, url: page.url() });

  // Client B: the browser's session signs it in without a password.
  await page.goto(env.AUTHORIZE_B);
  emit({ step: 'b', login_form_shown: await loginFormShown(), url: page.url() });

  // Logout (RP-initiated, with id_token_hint), then client A must ask again.
  const { value: logoutUrl } = await input.next();
  await page.goto(logoutUrl);
  await page.waitForURL(back('/bye'));
  emit({ step: 'logout', url: page.url() });
  await page.goto(env.AUTHORIZE_A);
  emit({ step: 'after', login_form_shown: await loginFormShown(), url: page.url() });
} catch (e) {
  emit({ step: 'error', error: String(e), url: page.url(), html: await page.content().catch(() => '') });
  process.exitCode = 1;
} finally {
  await browser.close();
  process.stdin.destroy();
}

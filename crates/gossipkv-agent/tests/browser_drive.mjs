// Drives the status page in headless Chromium over the DevTools protocol
// (no npm package): sets a key through the page's form and waits for the
// page to say it is set. Usage: node browser_drive.mjs CHROMIUM URL KEY VALUE
// Exit 0 on success; prints what went wrong otherwise.
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [chromium, url, key, value] = process.argv.slice(2);
const profile = mkdtempSync(join(tmpdir(), "gossipkv-chromium-"));
const browser = spawn(chromium, [
  "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
  "--remote-debugging-port=0", `--user-data-dir=${profile}`, url,
], { stdio: "ignore" });

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const deadline = Date.now() + 60000;
function check(what) {
  if (Date.now() > deadline) throw new Error("timed out: " + what);
}

async function main() {
  // Chromium writes the port it picked into the profile.
  let port;
  for (;;) {
    check("DevToolsActivePort");
    try { port = readFileSync(join(profile, "DevToolsActivePort"), "utf8").split("\n")[0]; }
    catch (_) { port = ""; }
    if (/^[0-9]+$/.test(port)) break; // written whole
    await sleep(50);
  }
  let page;
  for (;;) {
    check("the page target");
    try {
      const targets = await (await fetch(`http://127.0.0.1:${port}/json/list`)).json();
      page = targets.find((t) => t.type === "page" && t.url.startsWith(url));
      if (page) break;
    } catch (_) {
      // Not listening yet.
    }
    await sleep(50);
  }
  const ws = new WebSocket(page.webSocketDebuggerUrl);
  await new Promise((res, rej) => { ws.onopen = res; ws.onerror = rej; });
  let next = 1;
  const pending = new Map();
  ws.onmessage = (m) => {
    const msg = JSON.parse(m.data);
    if (msg.id && pending.has(msg.id)) { pending.get(msg.id)(msg); pending.delete(msg.id); }
  };
  const evaluate = (expression) => new Promise((res) => {
    const id = next++;
    pending.set(id, (msg) => res(msg.result && msg.result.result ? msg.result.result.value : undefined));
    ws.send(JSON.stringify({ id, method: "Runtime.evaluate", params: { expression, returnByValue: true } }));
  });
  // Wait for the page to show its node (it loaded and reached the agent).
  for (;;) {
    check("the page to load");
    const id = await evaluate("(document.getElementById('node-id') || {}).textContent || ''");
    if (id) break;
    await sleep(50);
  }
  await evaluate(`document.getElementById('key').value = ${JSON.stringify(key)};
    document.getElementById('value').value = ${JSON.stringify(value)};
    document.getElementById('set').click(); true`);
  for (;;) {
    check("the page to set the key");
    const result = await evaluate("document.getElementById('result').textContent");
    if (result === `${key}: set`) break;
    if (result && result.startsWith("error")) throw new Error(result);
    await sleep(50);
  }
  ws.close();
}

let code = 0;
try { await main(); } catch (e) { console.error("browser_drive: " + e.message); code = 1; }
browser.kill();
await sleep(200);
try { rmSync(profile, { recursive: true, force: true }); } catch (_) {}
process.exit(code);

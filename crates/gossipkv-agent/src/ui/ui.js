// The agent's status page. Data is only ever shown with textContent.
"use strict";

function headers() {
  const t = sessionStorage.getItem("gossipkv-token");
  return t ? { Authorization: "Bearer " + t } : {};
}

function setStatus(text) {
  document.getElementById("status").textContent = text || "";
}

async function api(method, path, body) {
  const r = await fetch(path, { method, headers: headers(), body });
  if (!r.ok && r.status !== 404) {
    let msg = "HTTP " + r.status;
    try { const e = await r.json(); msg = e.message + " (" + e.error + ")"; } catch (_) {}
    throw new Error(msg);
  }
  return r;
}

function b64decode(s) {
  const bytes = Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
  return new TextDecoder().decode(bytes);
}

function encodeKey(k) {
  return k.split("/").map(encodeURIComponent).join("/");
}

async function refresh() {
  try {
    const self = await (await api("GET", "/v1/self")).json();
    document.getElementById("node-id").textContent = self.node_id;
    const grid = document.getElementById("self");
    grid.replaceChildren();
    const rows = [
      ["address", self.addr], ["generation", self.generation], ["synced", self.synced],
      ["keys", self.keys], ["memory bytes", self.memory_bytes], ["live peers", self.live_peers],
      ["health", self.health],
    ];
    if (self.stats) {
      rows.push(["datagrams sent / received", self.stats.datagrams_sent + " / " + self.stats.datagrams_received]);
      rows.push(["bytes sent / received", self.stats.bytes_sent + " / " + self.stats.bytes_received]);
    }
    for (const [k, v] of rows) {
      const a = document.createElement("div"); a.textContent = k;
      const b = document.createElement("div"); b.textContent = String(v); b.className = "mono";
      grid.append(a, b);
    }
    const members = await (await api("GET", "/v1/members")).json();
    const body = document.querySelector("#members tbody");
    body.replaceChildren();
    for (const m of members) {
      const tr = document.createElement("tr");
      tr.className = "member";
      for (const v of [m.node_id, m.addr, m.state, m.generation]) {
        const td = document.createElement("td"); td.textContent = String(v); tr.append(td);
      }
      tr.children[2].className = "state-" + m.state;
      body.append(tr);
    }
    setStatus("");
  } catch (e) {
    setStatus("cannot reach the agent: " + e.message);
  }
}

function addChange(text) {
  const list = document.getElementById("changes");
  const li = document.createElement("li");
  li.textContent = new Date().toLocaleTimeString() + "  " + text;
  list.prepend(li);
  while (list.children.length > 100) list.lastChild.remove();
}

// The watch stream, read with fetch (EventSource cannot send a token).
async function watch() {
  let lastId = null;
  for (;;) {
    try {
      const h = headers();
      if (lastId !== null) h["Last-Event-ID"] = lastId;
      const r = await fetch("/v1/watch?prefix=", { headers: h });
      if (!r.ok) throw new Error("HTTP " + r.status);
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      let ev = { event: "", id: null, data: "" };
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl).replace(/\r$/, "");
          buf = buf.slice(nl + 1);
          if (line.startsWith("event:")) ev.event = line.slice(6).trim();
          else if (line.startsWith("id:")) ev.id = line.slice(3).trim();
          else if (line.startsWith("data:")) ev.data += line.slice(5).trim();
          else if (line === "" && ev.event) {
            if (ev.id !== null) lastId = ev.id;
            showEvent(ev);
            ev = { event: "", id: null, data: "" };
          }
        }
      }
    } catch (e) {
      setStatus("watch stream: " + e.message);
    }
    await new Promise((res) => setTimeout(res, 2000));
  }
}

function showEvent(ev) {
  let d = {};
  try { d = JSON.parse(ev.data); } catch (_) {}
  if (ev.event === "put") addChange("put " + d.key + " = " + b64decode(d.value || ""));
  else if (ev.event === "delete") addChange("delete " + d.key + " (" + d.reason + ")");
  else if (ev.event === "reset") addChange("reset: some changes were skipped");
}

async function getKey() {
  const key = document.getElementById("key").value;
  const out = document.getElementById("result");
  try {
    const r = await api("GET", "/v1/kv/" + encodeKey(key));
    if (r.status === 404) { out.textContent = key + ": absent"; return; }
    const [e] = await r.json();
    document.getElementById("value").value = b64decode(e.value);
    out.textContent = key + ": version " + e.version + (e.ttl_ms !== null ? ", ttl " + e.ttl_ms + " ms" : "");
  } catch (e) { out.textContent = "error: " + e.message; }
}

async function setKey() {
  const key = document.getElementById("key").value;
  const out = document.getElementById("result");
  try {
    await api("PUT", "/v1/kv/" + encodeKey(key), document.getElementById("value").value);
    out.textContent = key + ": set";
  } catch (e) { out.textContent = "error: " + e.message; }
}

async function deleteKey() {
  const key = document.getElementById("key").value;
  const out = document.getElementById("result");
  try {
    await api("DELETE", "/v1/kv/" + encodeKey(key));
    out.textContent = key + ": deleted";
  } catch (e) { out.textContent = "error: " + e.message; }
}

document.getElementById("get").addEventListener("click", getKey);
document.getElementById("set").addEventListener("click", setKey);
document.getElementById("delete").addEventListener("click", deleteKey);
document.getElementById("save-token").addEventListener("click", () => {
  sessionStorage.setItem("gossipkv-token", document.getElementById("token").value);
  refresh();
});

refresh();
setInterval(refresh, 2000);
watch();

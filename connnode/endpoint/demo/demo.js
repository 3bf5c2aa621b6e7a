// The demo page (connnode/endpoint/demo.py): register the service worker,
// subscribe with this node's demo VAPID key, send through POST /demo/send,
// show what the worker received and the time from click to receipt.
//
// Automation (tests/e2e/test_firefox.py): with ?auto=1&collector=<origin>
// the page reports every step to <collector>/step and takes its commands
// (subscribe, send, unsubscribe, goto, close, done) from <collector>/next.
"use strict";

const params = new URLSearchParams(location.search);
const collector = params.get("collector");
const auto = params.get("auto") === "1" && !!collector;
const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

let config = null;
let registration = null;
let subscription = null;
const clicks = new Map(); // text -> Date.now() of the click that sent it

function report(step, detail = {}) {
  const line = `${new Date().toISOString()} ${step} ${JSON.stringify(detail)}`;
  if (auto) {  // the steps on the page too, for a person watching a test
    const log = $("log");
    log.hidden = false;
    log.textContent += line + "\n";
  }
  if (collector) {
    fetch(collector + "/step", {
      method: "POST", mode: "no-cors",
      body: JSON.stringify({ step, source: "page", ...detail }),
    }).catch(() => {});
  }
}

function fail(where, error) {
  report("error", { where, message: String(error && error.message || error) });
}

function keyBytes(base64url) {
  const base64 = base64url.replace(/-/g, "+").replace(/_/g, "/");
  const raw = atob(base64 + "=".repeat((4 - base64.length % 4) % 4));
  return Uint8Array.from(raw, (c) => c.charCodeAt(0));
}

function sameKey(buffer, base64url) {
  if (!buffer) return false;
  const a = new Uint8Array(buffer), b = keyBytes(base64url);
  return a.length === b.length && a.every((value, i) => value === b[i]);
}

async function patiently(what, call) {
  // A push call made while the browser's push service is still starting can
  // go unanswered (seen in Firefox 140): give each try 5 s, and try again.
  for (let attempt = 1; ; attempt++) {
    let timer;
    const late = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: no answer in 5 s`)), 5000);
    });
    try {
      return await Promise.race([call(), late]);
    } catch (error) {
      if (attempt >= 6 || !String(error.message).includes("no answer")) throw error;
      report("retry", { what, attempt });
    } finally {
      clearTimeout(timer);
    }
  }
}

function unsupported(why) {
  $("unsupported").hidden = false;
  $("unsupported-why").textContent = why;
  $("subscribe").disabled = true;
  report("unsupported", { why });
}

async function activeWorker(reg) {
  // The page (/demo) is outside the worker's scope (/demo/), so
  // navigator.serviceWorker.ready would not settle for it: wait here.
  const deadline = Date.now() + 30000;
  while (!reg.active) {
    if (Date.now() > deadline) throw new Error("the service worker did not activate in 30 s");
    await sleep(100);
  }
  return reg.active;
}

const KEPT_SUBSCRIPTION = "connnode-demo-subscription";

function renderSubscription(json) {
  $("sub-details").hidden = !json;
  $("sub-state").textContent = json ? "subscribed" : "not subscribed";
  if (!json) return;
  $("sub-endpoint").textContent = json.endpoint;
  $("sub-json").textContent = JSON.stringify(json, null, 2);
}

function showSubscription() {
  const subscribed = !!subscription;
  const json = subscribed ? subscription.toJSON() : null;
  renderSubscription(json);
  try {
    if (json) localStorage.setItem(KEPT_SUBSCRIPTION, JSON.stringify(json));
    else localStorage.removeItem(KEPT_SUBSCRIPTION);
  } catch (error) { /* storage off: nothing kept */ }
  $("unsubscribe").disabled = !subscribed;
  $("send").disabled = !subscribed;
  $("send-state").textContent = subscribed ? "Ready." : "Subscribe first.";
  $("mismatch").hidden = true;
  if (!subscribed) return true;
  const origin = new URL(json.endpoint).origin;
  const expected = new URL(config.endpointUrl).origin;
  if (origin !== expected) {
    $("mismatch").hidden = false;
    $("mismatch-origin").textContent = origin;
    $("mismatch-expected").textContent = expected;
    $("mismatch-ws").textContent = config.websocketUrl;
    return false;
  }
  return true;
}

async function subscribe() {
  $("subscribe").disabled = true;
  try {
    let existing = await patiently("getSubscription",
      () => registration.pushManager.getSubscription());
    if (existing && !sameKey(existing.options.applicationServerKey, config.applicationServerKey)) {
      await existing.unsubscribe(); // made with another key (data_dir wiped?)
      existing = null;
    }
    subscription = existing || await patiently("subscribe", () =>
      registration.pushManager.subscribe({
        userVisibleOnly: true, applicationServerKey: keyBytes(config.applicationServerKey),
      }));
    const originOk = showSubscription();
    report("subscribed", { endpoint: subscription.endpoint, originOk });
  } catch (error) {
    $("sub-state").textContent = "subscription failed: " + error;
    fail("subscribe", error);
  } finally {
    $("subscribe").disabled = false;
  }
}

async function unsubscribe() {
  try {
    const ok = subscription ? await patiently("unsubscribe", () => subscription.unsubscribe())
      : false;
    subscription = null;
    showSubscription();
    report("unsubscribed", { ok });
  } catch (error) {
    fail("unsubscribe", error);
  }
}

async function send() {
  if (!subscription) return;
  const text = $("text").value;
  clicks.set(text, Date.now());
  $("send-state").textContent = "Sending...";
  try {
    const response = await fetch("/demo/send", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ subscription: subscription.toJSON(), text }),
    });
    const answer = await response.json().catch(() => ({}));
    const said = answer.endpoint && answer.endpoint.message ? `: ${answer.endpoint.message}`
      : answer.message ? `: ${answer.message}` : "";
    $("send-state").textContent = response.status === 201
      ? "The endpoint answered 201 Created; waiting for the push..."
      : `The endpoint answered ${response.status}${said}`;
    report("sent", { status: response.status, text, answer });
  } catch (error) {
    $("send-state").textContent = "Sending failed: " + error;
    fail("send", error);
  }
}

// What was received is also kept in localStorage (the last 10) and shown at
// once when the page loads, before anything asynchronous: a page opened
// again, or Firefox's --screenshot of it, shows the pushes this browser got.
const KEPT = "connnode-demo-received";

function kept() {
  try {
    const list = JSON.parse(localStorage.getItem(KEPT) || "[]");
    return Array.isArray(list) ? list : [];
  } catch (error) {
    return [];
  }
}

function showReceived(entry) {
  $("received-none").hidden = true;
  const item = document.createElement("li");
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = entry.text;
  item.append(text, ` at ${new Date(entry.at).toLocaleTimeString()}` +
    (entry.ms === null ? "" : `, ${entry.ms} ms after the click`));
  $("received").prepend(item);
  $("received-box").className = "ok";
}

function received(message) {
  const clicked = clicks.get(message.text);
  const ms = clicked === undefined ? null : Date.now() - clicked;
  clicks.delete(message.text);
  const entry = { text: message.text, ms, at: Date.now() };
  showReceived(entry);
  try {
    localStorage.setItem(KEPT, JSON.stringify([entry, ...kept()].slice(0, 10)));
  } catch (error) { /* storage full or off: the page still shows it */ }
  $("send-state").textContent = ms === null ? "Received." : `Received ${ms} ms after the click.`;
  report("received", { text: message.text, ms });
}

async function commands() {
  // Bounded: a forgotten page stops asking after 15 minutes.
  const until = Date.now() + 15 * 60 * 1000;
  while (Date.now() < until) {
    let command;
    try {
      command = await (await fetch(collector + "/next")).json();
    } catch (error) {
      await sleep(500);
      continue;
    }
    if (command.command === "done") return;
    if (command.command === "goto") {  // another page (e.g. another node's demo)
      report("leaving", { url: command.url });
      location.href = command.url;
      return;
    }
    if (command.command === "close") {  // Firefox quits cleanly with its last window
      report("closing", {});
      await sleep(200);
      window.close();
      return;
    }
    if (command.command === "subscribe") await subscribe();
    else if (command.command === "unsubscribe") await unsubscribe();
    else if (command.command === "send") {
      $("text").value = command.text;
      await send();
    } else await sleep(200);
  }
}

async function main() {
  kept().reverse().forEach(showReceived);
  try {  // as last seen, until the browser answers (below)
    const last = JSON.parse(localStorage.getItem(KEPT_SUBSCRIPTION) || "null");
    renderSubscription(last);
    if (last) $("send-state").textContent = "Checking this browser's subscription...";
  } catch (error) { /* nothing kept */ }
  report("loaded", { secure: window.isSecureContext });
  $("subscribe").onclick = subscribe;
  $("unsubscribe").onclick = unsubscribe;
  $("send").onclick = send;
  try {
    config = await (await fetch("/demo/config.json")).json();
  } catch (error) {
    fail("config", error);
    return;
  }
  $("endpoint-url").textContent = config.endpointUrl;
  $("server-key").textContent = config.applicationServerKey;
  $("about").hidden = false;
  if (!("serviceWorker" in navigator) || !("PushManager" in window)) {
    unsupported(window.isSecureContext
      ? "This browser has no service workers or no Push API (in Firefox: dom.serviceWorkers.enabled and dom.push.enabled)."
      : "This page is not a secure context: open it over https://, or as http://localhost / " +
        "http://127.0.0.1, or set dom.serviceWorkers.testing.enabled in about:config.");
    return;
  }
  navigator.serviceWorker.addEventListener("message", (event) => {
    if (event.data && event.data.type === "push") received(event.data);
    else if (event.data && event.data.type === "subscription-change") {
      report("subscription-change", {});
    }
  });
  navigator.serviceWorker.startMessages();
  try {
    const script = collector ? "/demo/sw.js?collector=" + encodeURIComponent(collector)
      : "/demo/sw.js";
    registration = await navigator.serviceWorker.register(script, { scope: "/demo/" });
    await activeWorker(registration);
    report("worker-ready", {});
    subscription = await patiently("getSubscription",
      () => registration.pushManager.getSubscription());
    if (subscription && !sameKey(subscription.options.applicationServerKey,
      config.applicationServerKey)) {
      subscription = null; // another key: Subscribe replaces it
    }
    showSubscription();
  } catch (error) {
    unsupported("The service worker could not be registered: " + error);
    return;
  }
  if (auto) commands();
}

main();

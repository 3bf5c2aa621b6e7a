// The demo's service worker (scope /demo/): shows a notification for each
// push and posts the decrypted text to the demo pages of this origin. The
// browser has decrypted the message (aes128gcm) before "push" fires.
// Registered as sw.js?collector=<origin> by an automated page, it also
// reports each step to <collector>/step (tests/e2e/test_firefox.py).
"use strict";

const collector = new URL(self.location.href).searchParams.get("collector");

function report(step, detail = {}) {
  if (!collector) return Promise.resolve();
  return fetch(collector + "/step", {
    method: "POST", mode: "no-cors",
    body: JSON.stringify({ step, source: "worker", ...detail }),
  }).catch(() => {});
}

async function tellPages(message) {
  const pages = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
  for (const page of pages) page.postMessage(message);
  return pages.length;
}

self.addEventListener("install", (event) => {
  event.waitUntil(self.skipWaiting().then(() => report("worker-installed")));
});

self.addEventListener("activate", (event) => {
  event.waitUntil(self.clients.claim().then(() => report("worker-activated")));
});

self.addEventListener("push", (event) => {
  const text = event.data ? event.data.text() : "";
  event.waitUntil((async () => {
    await report("worker-push", { text });
    const pages = await tellPages({ type: "push", text });
    try {
      await self.registration.showNotification("connnode demo", {
        body: text || "(a push without data)", tag: "connnode-demo",
      });
      await report("worker-notified", { pages });
    } catch (error) {
      await report("worker-notification-failed", { message: String(error), pages });
    }
  })());
});

self.addEventListener("pushsubscriptionchange", (event) => {
  event.waitUntil(Promise.all([report("worker-subscription-change"),
    tellPages({ type: "subscription-change" })]));
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  event.waitUntil((async () => {
    const pages = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
    if (pages.length) return pages[0].focus();
    return self.clients.openWindow("/demo/");
  })());
});

// The progressive layer: live parts of a page over Server-Sent Events, and local times. No library, no build.
// A [data-live] element names a stream; each message is {element id: HTML}, swapped in place (never a reload).
"use strict";
window.__loadedAt = Date.now();

function localTimes(root) {
  for (const t of root.querySelectorAll("time")) {
    const s = Number(t.textContent);
    if (s > 1e9 && !t.dateTime) {
      const d = new Date(s * 1000);
      t.dateTime = d.toISOString();
      t.textContent = d.toLocaleString();
    }
  }
}

function follow(url) {
  const source = new EventSource(url);
  source.onmessage = (message) => {
    const parts = JSON.parse(message.data);
    for (const [id, html] of Object.entries(parts)) {
      const element = document.getElementById(id);
      if (element && element.innerHTML !== html) {
        element.innerHTML = html;
        localTimes(element);
      }
    }
    document.body.dataset.liveUpdates = String(Number(document.body.dataset.liveUpdates || 0) + 1);
  };
}

document.addEventListener("DOMContentLoaded", () => {
  localTimes(document);
  for (const element of document.querySelectorAll("[data-live]")) follow(element.dataset.live);
});

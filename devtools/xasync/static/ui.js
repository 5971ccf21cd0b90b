// Fill in the counts by status, and refresh the page while any image on it is unfinished: poll the same query as JSON every few seconds,
// and reload when an image appears, leaves, or changes status. Polling stops once all are finished.
"use strict";
(function () {
  // The counts come after the grid: they read the whole time window of the index, the grid one page.
  const counts = document.getElementById("counts");
  if (counts) {
    fetch(counts.dataset.url, { headers: { Accept: "application/json" } })
      .then((answer) => (answer.ok ? answer.json() : Promise.reject(answer.status)))
      .then((body) => {
        for (const link of counts.querySelectorAll(".count")) {
          link.querySelector(".number").textContent = String(body[link.dataset.status] ?? 0);
        }
      })
      .catch(() => {
        for (const number of counts.querySelectorAll(".number")) number.textContent = "?";
      });
  }

  const UNFINISHED = new Set(["SUBMITTING", "CREATED", "PROCESSING"]);
  const grid = document.getElementById("grid");
  if (!grid) return;
  const every = Number(grid.dataset.pollMs) || 2000;
  const shown = () =>
    Array.from(grid.querySelectorAll(".card"), (card) => [card.dataset.uri, card.dataset.status]);
  const inFlight = () => shown().some(([, status]) => UNFINISHED.has(status));
  const note = document.getElementById("refreshing");

  async function poll() {
    if (!inFlight()) {
      if (note) note.hidden = true;
      return;
    }
    if (note) note.hidden = false;
    try {
      const answer = await fetch(grid.dataset.poll, { headers: { Accept: "application/json" } });
      if (answer.ok) {
        const body = await answer.json();
        const now = body.images.map((image) => [image.uri, image.status]);
        if (JSON.stringify(now) !== JSON.stringify(shown())) {
          window.location.reload();
          return;
        }
      }
    } catch (error) {
      // The server may be restarting: keep polling.
    }
    window.setTimeout(poll, every);
  }
  if (inFlight()) {
    if (note) note.hidden = false;
    window.setTimeout(poll, every);
  }
})();

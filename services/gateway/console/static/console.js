// The console's only script of its own: keyboard navigation, find, jumps, copy.
// Reading works without it; htmx (vendored) does the live parts.

const rows = () => Array.from(document.querySelectorAll("#spine > .row"));
let current = -1;

function focusRow(index) {
  const all = rows();
  if (!all.length) return;
  current = Math.max(0, Math.min(index, all.length - 1));
  all.forEach((row, i) => row.classList.toggle("current", i === current));
  const row = all[current];
  row.focus({ preventScroll: true });
  row.scrollIntoView({ block: "nearest" });
}

function jumpTo(element) {
  if (!element) return;
  const row = element.closest(".row") || element;
  const index = rows().indexOf(row);
  if (index >= 0) focusRow(index);
  else element.scrollIntoView({ block: "center" });
}

function nextMatching(selector) {
  const all = rows();
  for (let step = 1; step <= all.length; step++) {
    const i = (current + step) % all.length;
    if (all[i].matches(selector)) return all[i];
  }
  return null;
}

function typing(event) {
  const target = event.target;
  return target instanceof HTMLElement &&
    (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName));
}

document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey || typing(event)) return;
  const help = document.getElementById("help");
  switch (event.key) {
    case "j": focusRow(current + 1); break;
    case "k": focusRow(current - 1); break;
    case "o": {
      const details = rows()[current]?.querySelector("details.step");
      if (details) details.open = !details.open;
      break;
    }
    case "e": jumpTo(nextMatching(".failed")); break;
    case "$": jumpTo(document.querySelector('[data-jump="costly"]') &&
      document.querySelector(document.querySelector('[data-jump="costly"]').getAttribute("href")));
      break;
    case "/": document.getElementById("find")?.focus(); break;
    case "?": if (help && !help.open) help.showModal(); break;
    default: return;
  }
  event.preventDefault();
});

document.addEventListener("click", (event) => {
  const target = event.target instanceof Element ? event.target : null;
  const jump = target?.closest("[data-jump]");
  if (jump) {
    event.preventDefault();
    if (jump.dataset.jump === "error") jumpTo(nextMatching(".failed"));
    else jumpTo(document.querySelector(jump.getAttribute("href")));
    return;
  }
  if (target?.closest("[data-help]")) {
    event.preventDefault();
    document.getElementById("help")?.showModal();
    return;
  }
  const copy = target?.closest("[data-copy]");
  if (copy) {
    const text = document.getElementById(copy.dataset.copy)?.textContent ?? "";
    navigator.clipboard?.writeText(text).then(() => { copy.textContent = "Copied"; },
      () => { copy.textContent = "Select and copy"; });
  }
});

// A stream that had to start over (htmx replaces a closed EventSource, which
// forgets Last-Event-ID) may send rows the page already has: keep each row once,
// in its first place, with the newest content.
document.addEventListener("htmx:sseMessage", () => {
  const seen = new Map();
  for (const row of document.querySelectorAll("#spine > li[id]")) {
    const earlier = seen.get(row.id);
    if (earlier) {
      earlier.replaceWith(row);
    }
    seen.set(row.id, row);
  }
});

// defectstream web view: keyboard shortcuts and box drawing on the review page. No framework, no build step;
// every action also works without this script (plain forms, box corners typed into the fields).
(function () {
  "use strict";
  function $(id) { return document.getElementById(id); }
  function typing(e) { var t = e.target; return t && (t.tagName === "INPUT" || t.tagName === "SELECT" || t.tagName === "TEXTAREA"); }

  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (typing(e)) { if (e.key === "Escape") e.target.blur(); return; }
    var go = null;
    if (e.key === "c" && $("confirm")) go = function () { $("f-confirm").submit(); };
    else if (e.key === "x" && $("reject")) go = function () { $("f-reject").submit(); };
    else if (e.key === "r" && $("relabel-class")) go = function () { $("relabel-class").focus(); };
    else if (e.key === "m" && $("missed-class")) go = function () { $("missed-class").focus(); };
    else if (e.key === "p" && $("part-link")) go = function () { window.location = $("part-link").href; };
    else if (e.key === "q" && $("skip")) go = function () { window.location = $("skip").href; };
    else if (e.key === "Enter" && $("start-review")) go = function () { window.location = $("start-review").href; };
    if (go) { e.preventDefault(); go(); }
  });

  // the live page: its <main> is fetched again every data-refresh-ms and swapped in place (no reload of the
  // page, no flicker); without this script a <noscript> meta refresh reloads it
  var live = $("live");
  if (live && +live.dataset.refreshMs > 0) {
    var busy = false;
    setInterval(function () {
      if (busy || document.hidden) return;
      busy = true;
      fetch(window.location.href, {credentials: "same-origin", headers: {"X-Live-Refresh": "1"}})
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          if (html === null) return;
          var next = new DOMParser().parseFromString(html, "text/html").getElementById("live");
          if (next) live.innerHTML = next.innerHTML;
        })
        .catch(function () {})
        .then(function () { busy = false; });
    }, +live.dataset.refreshMs);
  }

  var area = $("drawable");
  if (!area) return;
  var rect = $("drawn"), start = null;
  function toImage(ev) {
    var r = area.getBoundingClientRect();
    var w = +area.dataset.w, h = +area.dataset.h;
    return [Math.round(Math.max(0, Math.min(w, (ev.clientX - r.left) * w / r.width))),
            Math.round(Math.max(0, Math.min(h, (ev.clientY - r.top) * h / r.height)))];
  }
  function show(a, b) {
    var x0 = Math.min(a[0], b[0]), y0 = Math.min(a[1], b[1]), x1 = Math.max(a[0], b[0]), y1 = Math.max(a[1], b[1]);
    rect.setAttribute("x", x0); rect.setAttribute("y", y0);
    rect.setAttribute("width", x1 - x0); rect.setAttribute("height", y1 - y0);
    $("bx0").value = x0; $("by0").value = y0; $("bx1").value = x1; $("by1").value = y1;
  }
  area.addEventListener("mousedown", function (ev) { ev.preventDefault(); start = toImage(ev); show(start, start); });
  area.addEventListener("mousemove", function (ev) { if (start) show(start, toImage(ev)); });
  window.addEventListener("mouseup", function (ev) { if (start) { show(start, toImage(ev)); start = null; } });
})();

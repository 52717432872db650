// Stormwall console: the only script the pages load (served from the binary; the
// Content-Security-Policy allows no other). Everything works without it except live
// refresh, the copy button and confirmations.
"use strict";

(function () {
  // Confirm irreversible changes (forms marked data-confirm).
  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    var msg = form.getAttribute && form.getAttribute("data-confirm");
    if (msg && !window.confirm(msg)) {
      ev.preventDefault();
    }
  });

  // Copy a new key's secret to the clipboard.
  document.addEventListener("click", function (ev) {
    var btn = ev.target.closest && ev.target.closest("button[data-copy]");
    if (!btn) return;
    var el = document.getElementById(btn.getAttribute("data-copy"));
    if (!el) return;
    var text = el.textContent;
    var done = function () {
      var note = btn.parentNode.querySelector(".copied");
      if (note) note.textContent = "Copied.";
    };
    if (navigator.clipboard && navigator.clipboard.writeText) {
      navigator.clipboard.writeText(text).then(done, function () {
        selectText(el);
      });
    } else {
      selectText(el);
    }
  });

  function selectText(el) {
    var range = document.createRange();
    range.selectNodeContents(el);
    var sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
  }

  // Live pages: re-fetch the page every few seconds and swap <main>, unless the user is
  // typing in it or the tab is hidden.
  var main = document.getElementById("main");
  var every = main && parseInt(main.getAttribute("data-live") || "0", 10);
  if (!every) return;
  var busy = false;
  setInterval(function () {
    if (busy || document.hidden) return;
    var active = document.activeElement;
    if (active && main.contains(active) && /^(INPUT|SELECT|TEXTAREA)$/.test(active.tagName)) return;
    if (main.querySelector(".secret")) return;
    busy = true;
    fetch(window.location.href, {
      credentials: "same-origin",
      headers: { "x-console-poll": "1" },
      redirect: "follow",
    })
      .then(function (r) {
        if (r.redirected || r.status === 401) {
          window.location.reload();
          return null;
        }
        return r.ok ? r.text() : null;
      })
      .then(function (html) {
        if (!html) return;
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("main");
        if (fresh) {
          main.innerHTML = fresh.innerHTML;
          main.setAttribute("data-updated", String(Date.now()));
        }
      })
      .catch(function () {})
      .then(function () {
        busy = false;
      });
  }, every * 1000);
})();

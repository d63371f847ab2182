// stepflow ui: live parts of a page. The body's data-live names a server-sent-events URL;
// on each "change" the page is fetched again and its #live part swapped in place (with
// htmx's ajax helper, so filters and links keep working). A step page's #log with a
// data-log URL is filled as the step's log arrives. Filters swap #live through htmx and push
// the new address, which the next refresh fetches.
(function () {
  "use strict";

  function refresh() {
    if (window.htmx) {
      window.htmx.ajax("GET", window.location.pathname + window.location.search, {
        target: "#live",
        select: "#live",
        swap: "outerHTML",
      });
    } else {
      window.location.reload();
    }
  }

  function follow(url, onEvent) {
    if (!url || !window.EventSource) return null;
    var source = new EventSource(url);
    onEvent(source);
    return source;
  }

  function start() {
    var liveUrl = document.body.getAttribute("data-live");
    follow(liveUrl, function (source) {
      source.addEventListener("change", function (event) {
        refresh();
        if (event.data === "done") {
          source.close();
          document.body.removeAttribute("data-live");
        }
      });
    });
    var log = document.getElementById("log");
    var logUrl = log && log.getAttribute("data-log");
    follow(logUrl, function (source) {
      source.addEventListener("log", function (event) {
        var found = JSON.parse(event.data);
        found.entries.forEach(function (e) {
          log.textContent += "[" + e.stream + " #" + e.attempt + "] " + e.text;
        });
        source.close();
      });
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();

// stepflow ui: live parts of a page. The body's data-live names a server-sent-events URL;
// on each "change" the page is fetched again and its #live part swapped in place (with
// htmx's ajax helper, so filters and links keep working). A step page's #log with a
// data-log URL is filled as the step's log arrives.
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
    // Filters without a reload: htmx submits the form; keep the live stream's query in step.
    document.body.addEventListener("htmx:pushedIntoHistory", function () {
      var current = document.body.getAttribute("data-live");
      if (current && current.indexOf("/events/runs") === 0 && current.split("?")[0] === "/events/runs") {
        document.body.setAttribute("data-live", "/events/runs" + window.location.search);
      }
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();

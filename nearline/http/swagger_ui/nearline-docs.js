// Starts Swagger UI on this server's OpenAPI document (nearline/http/pages.py serves this file).
// Nothing is fetched from elsewhere: validatorUrl null turns off the badge that would send the
// document to validator.swagger.io. A key given as ?code=KEY in the page's URL is sent with the
// document's request and every "Try it out" (x-functions-key), as the API's own URLs carry it.
(function () {
  "use strict";
  var script = document.currentScript;
  var key = new URLSearchParams(window.location.search).get("code");
  window.ui = SwaggerUIBundle({
    url: script.getAttribute("data-spec"),
    dom_id: "#swagger-ui",
    deepLinking: true,
    tryItOutEnabled: true,
    validatorUrl: null,
    requestInterceptor: function (request) {
      if (key) {
        request.headers["x-functions-key"] = key;
      }
      return request;
    },
  });
})();

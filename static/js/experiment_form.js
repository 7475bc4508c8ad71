/*
 * The experiment form's preset select: choosing a preset copies its values (over the library's
 * defaults) into every config field. Without this script the form still works: fields left
 * empty take the chosen preset's value on the server.
 *
 * The uploaded-dataset select is shown only while the dataset (chosen, or the preset's) is
 * imagefolder; hidden, it is also disabled, so it is not sent. Without this script it is
 * always shown, and the server refuses an upload with another dataset.
 */
(function () {
  "use strict";

  var blob = document.getElementById("preset-data");
  var namesBlob = document.getElementById("config-field-names");
  var select = document.getElementById("id_preset");
  if (!blob || !namesBlob || !select) return;
  var data = JSON.parse(blob.textContent);
  var fieldNames = JSON.parse(namesBlob.textContent);
  var form = select.form;

  function asFieldValue(value) {
    if (value === null || value === undefined) return "";
    if (typeof value === "boolean") return value ? "true" : "false";
    return String(value);
  }

  var datasetEl = form.elements.namedItem("dataset");
  var uploadEl = form.elements.namedItem("user_dataset");

  function syncUpload() {
    if (!datasetEl || !uploadEl) return;
    var values = Object.assign({}, data.defaults, data.presets[select.value] || {});
    var on = (datasetEl.value || values.dataset) === "imagefolder";
    var wrap = uploadEl.closest(".field");
    if (wrap) wrap.hidden = !on;
    uploadEl.disabled = !on;
  }

  function fill(presetName) {
    var values = Object.assign({}, data.defaults, data.presets[presetName] || {});
    fieldNames.forEach(function (name) {
      var el = form.elements.namedItem(name);
      if (!el || !(name in values)) return;
      el.value = asFieldValue(values[name]);
      if ("placeholder" in el && el.tagName === "INPUT") el.placeholder = el.value;
    });
    syncUpload();
  }

  select.addEventListener("change", function () {
    fill(select.value);
  });

  // A fresh form (every config field empty): show what the selected preset will use.
  var allEmpty = fieldNames.every(function (name) {
    var el = form.elements.namedItem(name);
    return !el || el.value === "";
  });
  if (allEmpty) fill(select.value);
  if (datasetEl) datasetEl.addEventListener("change", syncUpload);
  syncUpload();
})();

/* Progressive enhancement for the upload form: without this script the form does a plain
 * multipart POST to /result and the server answers a full page. With it, the chosen file is
 * previewed locally, a click on the preview sets the crop centre (x, y), and the form is sent
 * with fetch(); the server then answers only the results fragment, which goes into #results.
 */
(function () {
  'use strict';

  document.documentElement.classList.add('js');

  var form = document.getElementById('upload-form');
  var results = document.getElementById('results');
  if (!form || !results || !window.fetch || !window.FormData) {
    return;
  }

  var fileInput = form.querySelector('input[type="file"][name="image"]');
  var dropzone = document.getElementById('dropzone');
  var preview = document.getElementById('local-preview');
  var previewFrame = document.getElementById('local-preview-frame');
  var previewImg = document.getElementById('local-preview-img');
  var previewCaption = document.getElementById('local-preview-caption');
  var crosshair = document.getElementById('crosshair');
  var xInput = form.querySelector('input[name="x"]');
  var yInput = form.querySelector('input[name="y"]');
  var clearPoint = document.getElementById('clear-point');
  var submit = document.getElementById('submit');
  var submitLabel = submit ? submit.querySelector('.button-label') : null;
  var idleLabel = submitLabel ? submitLabel.textContent : '';
  var maxBytes = Number(form.getAttribute('data-max-bytes')) || 0;
  var maxSize = form.getAttribute('data-max-size') || '';
  var previewUrl = null;
  var inFlight = null;

  function formatBytes(n) {
    if (n < 1024) return n + ' bytes';
    if (n < 1024 * 1024) return (n / 1024).toFixed(1) + ' KB';
    return (n / 1024 / 1024).toFixed(1) + ' MB';
  }

  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, function (c) {
      return {'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'}[c];
    });
  }

  function showError(title, message, status) {
    results.innerHTML =
      '<div class="alert" role="alert"' + (status ? ' data-status="' + status + '"' : '') + '>' +
      '<h3 class="alert-title">' + escapeHtml(title) + '</h3>' +
      '<p class="alert-message">' + escapeHtml(message) + '</p>' +
      (status ? '<p class="alert-meta">HTTP ' + status + '</p>' : '') +
      '</div>';
  }

  // -- Local preview and crop centre ------------------------------------------------------

  function placeCrosshair() {
    var x = parseFloat(xInput.value);
    var y = parseFloat(yInput.value);
    var w = previewImg.naturalWidth;
    var h = previewImg.naturalHeight;
    if (preview.hidden || !w || !h || !isFinite(x) || !isFinite(y)) {
      crosshair.hidden = true;
      return;
    }
    crosshair.style.left = (x / w * 100) + '%';
    crosshair.style.top = (y / h * 100) + '%';
    crosshair.hidden = false;
  }

  function showPreview() {
    var file = fileInput.files && fileInput.files[0];
    if (previewUrl) {
      URL.revokeObjectURL(previewUrl);
      previewUrl = null;
    }
    if (!file) {
      preview.hidden = true;
      previewImg.removeAttribute('src');
      return;
    }
    previewUrl = URL.createObjectURL(file);
    previewCaption.textContent = file.name + ' · ' + formatBytes(file.size);
    previewImg.onload = function () {
      previewFrame.hidden = false;
      previewImg.classList.toggle('upscaled', previewImg.naturalHeight < 112);
      previewCaption.textContent = file.name + ' · ' + previewImg.naturalWidth + '×' +
        previewImg.naturalHeight + ' px · ' + formatBytes(file.size);
      placeCrosshair();
    };
    previewImg.onerror = function () {
      previewFrame.hidden = true;
      previewCaption.textContent = file.name + ' · ' + formatBytes(file.size) +
        ' · this browser cannot preview it (the server may still read it)';
    };
    previewFrame.hidden = true;  // until the browser has decoded it
    previewImg.src = previewUrl;
    preview.hidden = false;
  }

  fileInput.addEventListener('change', function () {
    xInput.value = '';
    yInput.value = '';
    showPreview();
  });

  previewImg.addEventListener('click', function (event) {
    var rect = previewImg.getBoundingClientRect();
    if (!rect.width || !rect.height || !previewImg.naturalWidth) return;
    var x = (event.clientX - rect.left) * previewImg.naturalWidth / rect.width;
    var y = (event.clientY - rect.top) * previewImg.naturalHeight / rect.height;
    xInput.value = Math.round(x);
    yInput.value = Math.round(y);
    placeCrosshair();
  });

  xInput.addEventListener('input', placeCrosshair);
  yInput.addEventListener('input', placeCrosshair);
  if (clearPoint) {
    clearPoint.addEventListener('click', function () {
      xInput.value = '';
      yInput.value = '';
      placeCrosshair();
    });
  }

  // Dropping an image anywhere on the page reads it (useFile, below).
  ['dragenter', 'dragover'].forEach(function (type) {
    document.addEventListener(type, function (event) {
      event.preventDefault();
      if (dropzone) dropzone.classList.add('dragging');
    });
  });
  ['dragleave', 'drop'].forEach(function (type) {
    document.addEventListener(type, function () {
      if (dropzone) dropzone.classList.remove('dragging');
    });
  });
  document.addEventListener('drop', function (event) {
    event.preventDefault();
    var files = event.dataTransfer && event.dataTransfer.files;
    if (files && files.length) useFile(files[0]);
  });

  // -- Submitting with fetch -------------------------------------------------------------

  function setBusy(busy) {
    form.classList.toggle('busy', busy);
    results.setAttribute('aria-busy', busy ? 'true' : 'false');
    if (submit) {
      submit.disabled = busy;
      submit.classList.toggle('busy', busy);
    }
    if (submitLabel) submitLabel.textContent = busy ? 'Working…' : idleLabel;
  }

  function revealResults() {
    var rect = results.getBoundingClientRect();
    if (rect.top < 0 || rect.top > window.innerHeight - 80) {
      results.scrollIntoView({behavior: 'smooth', block: 'start'});
    }
    results.focus({preventScroll: true});
  }

  async function errorFromResponse(response) {
    // Errors from this route are HTML fragments; anything else (e.g. a 500) is JSON.
    var type = response.headers.get('Content-Type') || '';
    if (type.indexOf('text/html') === 0) {
      return {html: await response.text()};
    }
    var message = 'The server answered HTTP ' + response.status + '.';
    try {
      var body = await response.json();
      if (body && body.error && body.error.message) message = body.error.message;
    } catch (ignored) { /* keep the generic message */ }
    return {title: 'Something went wrong', message: message};
  }

  // -- "Correct?" feedback on a result card -------------------------------------------------

  async function sendFeedback(box, label) {
    var status = box.querySelector('.feedback-status');
    var buttons = box.querySelectorAll('button, select');
    buttons.forEach(function (b) { b.disabled = true; });
    status.textContent = 'Sending…';
    try {
      var headers = {'Content-Type': 'application/json'};
      var key = form.querySelector('input[name="api_key"]');
      if (key && key.value) headers['X-API-Key'] = key.value;
      var response = await fetch('/v1/feedback', {
        method: 'POST',
        headers: headers,
        body: JSON.stringify({request_id: box.getAttribute('data-request-id'), label: label})
      });
      var body = await response.json().catch(function () { return null; });
      if (!response.ok) {
        throw new Error(body && body.error ? body.error.message : 'HTTP ' + response.status);
      }
      box.classList.add('sent');
      status.textContent = 'Thanks! Recorded ' + body.label + ' as the right answer.';
    } catch (err) {
      buttons.forEach(function (b) { b.disabled = false; });
      status.textContent = 'Could not send: ' + (err && err.message || err);
    }
  }

  // Delegated: result cards come and go with each fetched fragment.
  results.addEventListener('click', function (event) {
    var button = event.target.closest('.feedback button');
    if (!button) return;
    event.preventDefault();  // a no-JavaScript <form> would post and leave the page
    var box = button.closest('.feedback');
    var label = button.classList.contains('feedback-yes') ? button.value :
      box.querySelector('select[name="correction"]').value;
    sendFeedback(box, label);
  });

  // One request in flight at a time: a newer one aborts the older (the latest input wins).
  async function send(body) {
    if (inFlight) inFlight.abort();
    var controller = new AbortController();
    inFlight = controller;
    setBusy(true);
    try {
      var response = await fetch(form.action, {
        method: 'POST',
        body: body,
        headers: {'X-Requested-With': 'fetch'},
        signal: controller.signal
      });
      var type = response.headers.get('Content-Type') || '';
      if (response.ok && type.indexOf('text/html') === 0) {
        results.innerHTML = await response.text();
      } else {
        var error = await errorFromResponse(response);
        if (error.html) {
          results.innerHTML = error.html;
        } else {
          showError(error.title, error.message, response.status);
        }
      }
    } catch (err) {
      if (err && err.name === 'AbortError') return;  // a newer request replaced this one
      showError('Could not reach the server',
        'The request failed before an answer came back (' + (err && err.message || err) +
        '). Check that the service is running, then try again.');
    } finally {
      if (inFlight === controller) {
        inFlight = null;
        setBusy(false);
      }
    }
    return true;
  }

  form.addEventListener('submit', async function (event) {
    event.preventDefault();
    var file = fileInput.files && fileInput.files[0];
    if (!file) {
      showError('No image chosen', 'Choose an image file, then press Recognize.');
      fileInput.focus();
      return;
    }
    if (maxBytes && file.size > maxBytes) {
      showError('That file is too large',
        file.name + ' is ' + formatBytes(file.size) + '; the server accepts up to ' +
        maxSize + '. Choose a smaller image.', 413);
      return;
    }
    if (await send(new FormData(form))) revealResults();
  });

  // -- A file from elsewhere: the camera, a paste, a drop on the page ------------------------

  function useFile(file) {  // hoisted: the drop handler above calls it
    var picked = new DataTransfer();
    picked.items.add(file);
    fileInput.files = picked.files;
    fileInput.dispatchEvent(new Event('change', {bubbles: true}));
    form.requestSubmit();
  }

  var camera = document.getElementById('camera');
  if (camera) {
    camera.addEventListener('change', function () {
      if (camera.files && camera.files[0]) useFile(camera.files[0]);
    });
  }

  document.addEventListener('paste', function (event) {
    var items = (event.clipboardData && event.clipboardData.files) || [];
    for (var i = 0; i < items.length; i++) {
      if (items[i].type.indexOf('image/') === 0) {
        event.preventDefault();
        useFile(items[i]);
        return;
      }
    }
  });

  // -- The drawing pad: read as you draw -----------------------------------------------------

  var pad = document.getElementById('pad');
  if (pad && pad.getContext) {
    var ink = pad.getContext('2d');
    var strokes = [];       // each a list of [x, y] in the pad's own pixels
    var current = null;
    var timer = null;
    var waiting = false;    // a drawing is queued behind the request in flight
    var sending = false;
    var DEBOUNCE_MS = 250;
    var STROKE = 20;        // px on the 280 px pad: an MNIST stroke at 28 px

    var redraw = function () {
      ink.fillStyle = '#ffffff';
      ink.fillRect(0, 0, pad.width, pad.height);
      ink.strokeStyle = '#000000';
      ink.lineWidth = STROKE;
      ink.lineCap = 'round';
      ink.lineJoin = 'round';
      strokes.forEach(function (points) {
        ink.beginPath();
        ink.moveTo(points[0][0], points[0][1]);
        points.forEach(function (p) { ink.lineTo(p[0], p[1]); });
        if (points.length === 1) ink.lineTo(points[0][0] + 0.1, points[0][1]);
        ink.stroke();
      });
    };

    var where = function (event) {
      var box = pad.getBoundingClientRect();
      return [(event.clientX - box.left) * pad.width / box.width,
              (event.clientY - box.top) * pad.height / box.height];
    };

    var sendDrawing = async function () {
      if (!strokes.length) return;
      if (sending) { waiting = true; return; }  // at most one in flight; the latest wins
      sending = true;
      var blob = await new Promise(function (done) { pad.toBlob(done, 'image/png'); });
      var body = new FormData(form);
      body.set('image', blob, 'drawing.png');
      body.delete('x');
      body.delete('y');
      await send(body);
      sending = false;
      if (waiting) { waiting = false; sendDrawing(); }
    };

    var schedule = function () {
      clearTimeout(timer);
      timer = setTimeout(sendDrawing, DEBOUNCE_MS);
    };

    pad.addEventListener('pointerdown', function (event) {
      event.preventDefault();
      pad.setPointerCapture(event.pointerId);
      current = [where(event)];
      strokes.push(current);
      redraw();
    });
    pad.addEventListener('pointermove', function (event) {
      if (!current) return;
      current.push(where(event));
      redraw();
      schedule();
    });
    ['pointerup', 'pointercancel'].forEach(function (type) {
      pad.addEventListener(type, function () {
        if (!current) return;
        current = null;
        schedule();
      });
    });

    document.getElementById('pad-undo').addEventListener('click', function () {
      strokes.pop();
      redraw();
      if (strokes.length) schedule();
    });
    document.getElementById('pad-clear').addEventListener('click', function () {
      strokes = [];
      redraw();
    });
    redraw();
  }
})();

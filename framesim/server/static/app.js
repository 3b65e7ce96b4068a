/* framesim serve: the search page (see framesim/server/CONTRACT.md for the API it talks to).
 *
 * Plain modern JavaScript, no libraries, nothing from the network but this server. Loaded in <head>
 * without `defer`: the first block installs the error hook (uncaught errors, unhandled rejections,
 * console.error and policy violations go into #fs-errors, like the report); the page starts on
 * DOMContentLoaded.
 *
 * Escaping discipline: every text that comes from the server (file names, paths, messages) reaches
 * the DOM through textContent or attribute/property setters, never innerHTML, so a video called
 * `<img src=x onerror=alert(1)>.mp4` shows as exactly that text. URLs from the server are used only
 * when they are same-origin paths ("/frames/…", "/videos/…").
 */
(function () {
  'use strict';

  // -- error hook ------------------------------------------------------------------------------------
  var errors = [];
  window.__framesimErrors = errors;
  function showErrors() {
    var box = document.getElementById('fs-errors');
    if (!box || !errors.length) return;
    box.hidden = false;
    box.textContent = 'This page hit a script error, so parts of it may not work:\n' + errors.join('\n');
  }
  function addError(msg) {
    errors.push(String(msg));
    showErrors();
  }
  window.addEventListener('error', function (e) { // script errors (a failed <img> load does not bubble here)
    addError((e.message || 'error') + (e.filename ? ' (' + e.filename.slice(-60) + ':' + e.lineno + ')' : ''));
  });
  window.addEventListener('unhandledrejection', function (e) {
    var r = e.reason;
    addError('Unhandled rejection: ' + (r && r.message ? r.message : r));
  });
  document.addEventListener('securitypolicyviolation', function (e) {
    addError('Blocked by the page policy: ' + e.violatedDirective + ' ' + (e.blockedURI || ''));
  });
  var consoleError = console.error;
  console.error = function () {
    addError(Array.prototype.map.call(arguments, String).join(' '));
    return consoleError.apply(console, arguments);
  };

  // -- helpers ---------------------------------------------------------------------------------------
  function $(id) { return document.getElementById(id); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  /** The last part of a path (either separator), for display; the full path goes into a tooltip. */
  function base(p) {
    var s = String(p);
    var i = Math.max(s.lastIndexOf('/'), s.lastIndexOf('\\'));
    return s.slice(i + 1) || s;
  }
  /** Only same-origin absolute paths from the server are ever used as URLs. */
  function localUrl(u) {
    return typeof u === 'string' && u.charAt(0) === '/' && u.charAt(1) !== '/' && u.charAt(1) !== '\\';
  }
  function timecode(s) {
    if (typeof s !== 'number' || !isFinite(s) || s < 0) return '—';
    var ms = Math.round(s * 1000);
    var h = Math.floor(ms / 3600000), m = Math.floor(ms / 60000) % 60, sec = Math.floor(ms / 1000) % 60;
    function pad(n, w) { n = String(n); while (n.length < w) n = '0' + n; return n; }
    return pad(h, 2) + ':' + pad(m, 2) + ':' + pad(sec, 2) + '.' + pad(ms % 1000, 3);
  }
  function num(x, digits) {
    return (typeof x === 'number' && isFinite(x)) ? x.toFixed(digits) : '—';
  }
  function plural(n, word) { return n.toLocaleString('en') + ' ' + word + (n === 1 ? '' : 's'); }
  function kb(bytes) {
    if (typeof bytes !== 'number') return '';
    return bytes < 1024 * 1024 ? Math.max(1, Math.round(bytes / 1024)) + ' KB'
      : (bytes / 1024 / 1024).toFixed(1) + ' MB';
  }
  function sleep(ms) { return new Promise(function (res) { setTimeout(res, ms); }); }

  function ApiError(message, status) {
    this.name = 'ApiError';
    this.message = message;
    this.status = status;
  }
  ApiError.prototype = Object.create(Error.prototype);

  /** fetch + JSON; a non-2xx answer becomes an ApiError carrying the server's one-line `error`.
   *  503 (too many searches waiting) is retried a few times after its Retry-After. */
  function api(url, init, attempt) {
    attempt = attempt || 0;
    return fetch(url, init).then(function (resp) {
      if (resp.status === 503 && attempt < 3) {
        var wait = parseFloat(resp.headers.get('Retry-After') || '1');
        return sleep(1000 * (isFinite(wait) ? Math.min(Math.max(wait, 0.2), 10) : 1)).then(function () {
          return api(url, init, attempt + 1);
        });
      }
      return resp.text().then(function (body) {
        var data = null;
        try { data = body ? JSON.parse(body) : null; } catch (e) { data = null; }
        if (!resp.ok) {
          var msg = data && typeof data.error === 'string' ? data.error : 'HTTP ' + resp.status + ' ' + resp.statusText;
          if (resp.status === 401 || resp.status === 403) {
            msg += ' — open /login?token=… with the server\u2019s token first';
          }
          throw new ApiError(msg, resp.status);
        }
        if (data === null) throw new ApiError('The server sent an answer this page cannot read', resp.status);
        return data;
      });
    }, function (err) {
      if (err && err.name === 'AbortError') throw err;
      throw new ApiError('Cannot reach the framesim server (is it still running?)', 0);
    });
  }

  // -- the page --------------------------------------------------------------------------------------
  function start() {
    var stats = null;
    var query = null; // {kind: 'file', file, name} or {kind: 'frame', frameId, name, thumb}
    var results = [];
    var searchSeq = 0, controller = null, inflightKey = '', queryId = 0, shownQuery = 0, previewUrl = null;
    var current = -1, opener = null, seekTo = null;

    var statsLine = $('stats'), message = $('message'), busy = $('busy'), grid = $('results'),
      empty = $('empty'), meta = $('results-meta');
    var fileInput = $('file'), pick = $('pick'), drop = $('drop'), overlay = $('drop-overlay');
    var preview = $('preview'), previewImg = $('preview-img'), previewCap = $('preview-cap'),
      dropEmpty = $('drop-empty');
    var backboneSel = $('backbone'), videoSel = $('only'), topk = $('topk'), again = $('again'),
      form = $('options');
    var dlg = $('player'), video = $('video'), na = $('player-na'), still = $('player-still');

    // messages: one polite area above the results; errors look like errors
    function say(text, kind) {
      message.hidden = !text;
      message.textContent = text || '';
      message.className = 'message' + (kind ? ' ' + kind : '');
    }
    function setBusy(on) {
      busy.hidden = !on;
      grid.setAttribute('aria-busy', on ? 'true' : 'false');
      grid.classList.toggle('stale', on);
    }

    // -- stats and selects --
    function renderStats() {
      statsLine.replaceChildren();
      if (!stats) return;
      var bb = currentBackbone();
      var parts = [
        ['frames', plural(stats.frames || 0, 'frame')],
        ['videos', plural((stats.videos || []).length, 'video')]
      ];
      if (bb) {
        parts.push(['backbone', 'model ' + bb.name + (bb.dim ? ' (' + bb.dim + '-d)' : '')]);
        var st = bb.store || {};
        var store = [st.backend, st.search].filter(Boolean).join(', ');
        if (store) parts.push(['store', 'store ' + store + (typeof st.count === 'number' ? ' · ' + plural(st.count, 'point') : '')]);
      }
      if (stats.dataset) parts.push(['dataset', 'dataset ' + base(stats.dataset)]);
      parts.forEach(function (p, i) {
        if (i) statsLine.appendChild(el('span', 'sep', '·')).setAttribute('aria-hidden', 'true');
        var s = el('span', 'stat stat-' + p[0], p[1]);
        if (p[0] === 'dataset') s.title = String(stats.dataset);
        if (p[0] === 'store' && bb && bb.store && bb.store.location) s.title = String(bb.store.location);
        statsLine.appendChild(s);
      });
    }
    function currentBackbone() {
      if (!stats || !stats.backbones) return null;
      for (var i = 0; i < stats.backbones.length; i++) {
        if (stats.backbones[i].name === backboneSel.value) return stats.backbones[i];
      }
      return stats.backbones[0] || null;
    }
    function fillSelects() {
      backboneSel.replaceChildren();
      (stats.backbones || []).forEach(function (b) {
        var o = el('option', null, b.name);
        o.value = String(b.name);
        if (b.spec && b.spec !== b.name) o.title = String(b.spec);
        backboneSel.appendChild(o);
      });
      backboneSel.disabled = (stats.backbones || []).length < 2;
      var keep = videoSel.value;
      videoSel.replaceChildren(el('option', null, 'All videos'));
      videoSel.firstChild.value = '';
      var vids = (stats.videos || []).slice();
      var counts = {};
      vids.forEach(function (v) { var b = base(v.video); counts[b] = (counts[b] || 0) + 1; });
      vids.sort(function (a, b) { return base(a.video).localeCompare(base(b.video)); });
      vids.forEach(function (v) {
        var name = counts[base(v.video)] > 1 ? String(v.video) : base(v.video);
        var o = el('option', null, name + ' — ' + plural(v.frames || 0, 'frame') + (v.playable === false ? ' (no video file)' : ''));
        o.value = String(v.video);
        o.title = String(v.video);
        videoSel.appendChild(o);
      });
      videoSel.value = keep;
      if (videoSel.value !== keep) videoSel.value = '';
    }
    function loadStats() {
      return api('/api/stats').then(function (data) {
        stats = data;
        fillSelects();
        renderStats();
      }, function (err) {
        statsLine.textContent = 'The server did not answer.';
        say(err.message, 'error');
      });
    }

    // -- the query --
    function showPreview(src, caption) {
      if (previewUrl && previewUrl !== src) { URL.revokeObjectURL(previewUrl); previewUrl = null; }
      previewImg.src = src;
      previewCap.textContent = caption;
      preview.hidden = false;
      dropEmpty.hidden = true;
      drop.classList.add('has-image');
      pick.textContent = 'Choose another image…';
    }
    function useFile(file, how) {
      if (!file) return;
      if (file.type && !/^image\//i.test(file.type)) {
        say('\u201c' + (file.name || 'that file') + '\u201d is not an image (' + file.type + '). ' +
          'Choose a JPEG, PNG or WebP picture.', 'error');
        return;
      }
      var name = file.name || ('pasted image.' + ((file.type || 'image/png').split('/')[1] || 'png'));
      query = {kind: 'file', file: file, name: name, id: ++queryId};
      var url = URL.createObjectURL(file);
      showPreview(url, name + ' · ' + kb(file.size) + (how ? ' · ' + how : ''));
      previewUrl = url;
      previewImg.onload = function () {
        previewImg.onload = null;
        if (query && query.file === file && previewImg.naturalWidth) {
          previewCap.textContent = name + ' · ' + previewImg.naturalWidth + ' × ' + previewImg.naturalHeight +
            ' · ' + kb(file.size) + (how ? ' · ' + how : '');
        }
      };
      search();
    }
    function useFrame(r) {
      query = {kind: 'frame', id: ++queryId, frameId: r.frame_id, name: base(r.video) + ' @ ' + (r.time || timecode(r.timestamp_s))};
      showPreview(localUrl(r.thumbnail_url) ? r.thumbnail_url : '', query.name + ' · a frame of the dataset');
      search();
    }

    function validTopK() {
      var v = topk.value.trim();
      var n = Number(v);
      var ok = /^\d+$/.test(v) && n >= 1 && n <= 100;
      topk.setAttribute('aria-invalid', ok ? 'false' : 'true');
      return ok ? n : null;
    }

    // -- searching --
    function search() {
      if (!query) return;
      var k = validTopK();
      if (k === null) {
        say('Results: give a whole number from 1 to 100.', 'error');
        topk.focus();
        return;
      }
      var key = JSON.stringify([query.id, k, backboneSel.value, videoSel.value]);
      if (controller && key === inflightKey) return; // the same search is already running
      inflightKey = key;
      var seq = ++searchSeq;
      if (controller) controller.abort();
      controller = new AbortController();
      var req;
      if (query.kind === 'file') {
        var fd = new FormData();
        fd.append('file', query.file, query.name);
        fd.append('top_k', String(k));
        if (backboneSel.value) fd.append('backbone', backboneSel.value);
        if (videoSel.value) fd.append('video', videoSel.value);
        req = api('/api/search', {method: 'POST', body: fd, signal: controller.signal});
      } else {
        var qs = new URLSearchParams();
        qs.append('frame_id', query.frameId);
        qs.append('top_k', String(k));
        if (backboneSel.value) qs.append('backbone', backboneSel.value);
        if (videoSel.value) qs.append('video', videoSel.value);
        req = api('/api/search?' + qs.toString(), {signal: controller.signal});
      }
      say('');
      setBusy(true);
      again.disabled = false;
      var fresh = query.id !== shownQuery;
      req.then(function (data) {
        if (seq !== searchSeq) return;
        render(data);
        // one column (a phone): the results are below the controls, so bring a new query's results into view
        if (fresh && window.matchMedia('(max-width: 860px)').matches) $('results-h').scrollIntoView({block: 'start'});
        shownQuery = query.id;
      }).catch(function (err) {
        if (seq !== searchSeq || (err && err.name === 'AbortError')) return;
        say('The search failed: ' + (err && err.message ? err.message : String(err)), 'error');
      }).then(function () {
        if (seq === searchSeq) { setBusy(false); controller = null; }
      });
    }

    function render(data) {
      results = Array.isArray(data.results) ? data.results : [];
      grid.replaceChildren();
      var frag = document.createDocumentFragment();
      results.forEach(function (r, i) { frag.appendChild(card(r, i)); });
      grid.appendChild(frag);
      empty.hidden = results.length > 0;
      var q = data.query || {};
      var bits = [plural(results.length, 'frame')];
      if (q.name) bits.push('for ' + q.name + (q.width && q.height ? ' (' + q.width + ' × ' + q.height + ')' : ''));
      if (data.backbone) bits.push('model ' + data.backbone);
      if (typeof data.took_ms === 'number') bits.push(num(data.took_ms, 0) + ' ms');
      meta.textContent = bits.join(' · ');
      if (!results.length) {
        empty.replaceChildren(el('p', 'empty-title', 'No frame found'),
          el('p', null, videoSel.value ? 'Nothing in this video: try \u201cAll videos\u201d.' : 'The collection returned nothing.'));
      }
    }

    function card(r, i) {
      var li = el('li', 'cell');
      var b = el('button', 'result');
      b.type = 'button';
      b.dataset.index = String(i);
      b.dataset.frameId = String(r.frame_id);
      var name = base(r.video), time = r.time || timecode(r.timestamp_s);
      var thumb = el('span', 'thumb');
      var img = el('img');
      img.alt = '';
      img.decoding = 'async';
      img.loading = 'lazy';
      img.addEventListener('error', function () {
        img.replaceWith(el('span', 'ph', 'frame image not available'));
      }, {once: true});
      if (localUrl(r.thumbnail_url)) img.src = r.thumbnail_url;
      thumb.appendChild(img);
      thumb.appendChild(el('span', 'rank', '#' + r.rank));
      if (r.video_url) thumb.appendChild(el('span', 'play', '\u25b6')).setAttribute('aria-hidden', 'true');
      b.appendChild(thumb);

      var info = el('span', 'info');
      var row = el('span', 'row');
      row.appendChild(el('span', 'score', num(r.score, 3)));
      row.appendChild(el('span', 'time', time));
      info.appendChild(row);
      var bar = el('span', 'bar');
      var fill = el('span', 'fill');
      fill.style.setProperty('--s', String(Math.max(0, Math.min(1, Number(r.score) || 0))));
      bar.appendChild(fill);
      info.appendChild(bar);
      var v = el('span', 'video', name);
      v.title = String(r.video);
      info.appendChild(v);
      if (!r.video_url) info.appendChild(el('span', 'na', 'video not available'));
      b.appendChild(info);
      b.setAttribute('aria-label', 'Rank ' + r.rank + ': ' + name + ' at ' + time + ', score ' + num(r.score, 3) +
        (r.video_url ? '. Play from here' : '. video not available'));
      b.addEventListener('click', function () { openPlayer(i, b); });
      li.appendChild(b);
      return li;
    }

    // arrow keys move between results (Tab still visits each one)
    grid.addEventListener('keydown', function (e) {
      var t = e.target.closest && e.target.closest('.result');
      if (!t) return;
      var buttons = Array.prototype.slice.call(grid.querySelectorAll('.result'));
      var i = buttons.indexOf(t), j = -1;
      var cols = Math.max(1, Math.round(grid.clientWidth / Math.max(1, t.parentNode.offsetWidth)));
      if (e.key === 'ArrowRight') j = i + 1;
      else if (e.key === 'ArrowLeft') j = i - 1;
      else if (e.key === 'ArrowDown') j = i + cols;
      else if (e.key === 'ArrowUp') j = i - cols;
      else if (e.key === 'Home') j = 0;
      else if (e.key === 'End') j = buttons.length - 1;
      else return;
      e.preventDefault();
      if (buttons[Math.min(Math.max(j, 0), buttons.length - 1)]) buttons[Math.min(Math.max(j, 0), buttons.length - 1)].focus();
    });

    // -- the player --
    function note(text) { $('player-note').textContent = text || ''; }
    function openPlayer(i, from) {
      var r = results[i];
      if (!r) return;
      current = i;
      if (from) opener = from;
      var time = r.time || timecode(r.timestamp_s);
      $('player-title').textContent = base(r.video);
      $('player-title').title = String(r.video);
      $('player-video').textContent = String(r.video);
      $('player-time').textContent = time;
      $('player-frame').textContent = (typeof r.frame_index === 'number' && r.frame_index >= 0 ? '#' + r.frame_index + ' · ' : '') + 'rank ' + r.rank;
      $('player-score').textContent = num(r.score, 4);
      $('player-prev').disabled = i <= 0;
      $('player-next').disabled = i >= results.length - 1;
      note('');
      if (r.video_url && localUrl(r.video_url)) {
        na.hidden = true;
        video.hidden = false;
        $('player-replay').disabled = false;
        seekTo = Number(r.timestamp_s) || 0;
        var src = r.video_url.indexOf('#') >= 0 ? r.video_url : r.video_url + '#t=' + seekTo;
        video.muted = true;
        video.src = src;
      } else {
        seekTo = null;
        stopVideo();
        video.hidden = true;
        na.hidden = false;
        $('player-replay').disabled = true;
        if (localUrl(r.thumbnail_url)) still.src = r.thumbnail_url; else still.removeAttribute('src');
        still.alt = 'frame at ' + time + ' of ' + base(r.video);
      }
      if (!dlg.open) {
        dlg.showModal();
        $('player-close').focus();
      }
    }
    function stopVideo() {
      video.pause();
      if (video.hasAttribute('src')) {
        video.removeAttribute('src');
        video.load();
      }
    }
    function play() {
      var p = video.play();
      if (p && p.catch) {
        p.catch(function (err) {
          if (err && err.name === 'AbortError') return; // another result was opened meanwhile
          note('Press play to start (' + (err && err.message ? err.message : err) + ').');
        });
      }
    }
    video.addEventListener('loadedmetadata', function () {
      if (seekTo !== null) {
        var t = seekTo;
        if (isFinite(video.duration) && t > video.duration) t = Math.max(0, video.duration - 0.05);
        if (Math.abs(video.currentTime - t) > 0.04) video.currentTime = t;
        seekTo = null;
      }
      play();
    });
    video.addEventListener('error', function () {
      if (!video.getAttribute('src')) return;
      var code = video.error ? video.error.code : 0;
      note(code === 4 ? 'This browser cannot play this video (its format, or the file is missing or changed).'
        : 'The video could not be loaded (error ' + code + ').');
    });
    dlg.addEventListener('close', function () {
      stopVideo();
      current = -1;
      var back = opener && opener.isConnected ? opener : $('results-h');
      opener = null;
      back.focus();
    });
    // a click on the backdrop (the dialog box itself has no padding: its content covers it)
    dlg.addEventListener('click', function (e) { if (e.target === dlg) dlg.close(); });
    $('player-close').addEventListener('click', function () { dlg.close(); });
    $('player-prev').addEventListener('click', function () { openPlayer(current - 1); });
    $('player-next').addEventListener('click', function () { openPlayer(current + 1); });
    $('player-replay').addEventListener('click', function () {
      var r = results[current];
      if (!r) return;
      video.currentTime = Number(r.timestamp_s) || 0;
      play();
    });
    $('player-similar').addEventListener('click', function () {
      var r = results[current];
      if (!r) return;
      dlg.close();
      useFrame(r);
    });

    // -- input: the button, drag and drop, paste --
    pick.addEventListener('click', function (e) { e.stopPropagation(); fileInput.click(); });
    drop.addEventListener('click', function (e) {
      if (e.target === drop || e.target.closest('.drop-empty, .preview')) fileInput.click();
    });
    fileInput.addEventListener('change', function () {
      var f = fileInput.files && fileInput.files[0];
      if (f) useFile(f, '');
      fileInput.value = ''; // choosing the same file again still searches
    });

    function hasFiles(e) {
      var types = e.dataTransfer && e.dataTransfer.types;
      return !!types && Array.prototype.indexOf.call(types, 'Files') >= 0;
    }
    var dragDepth = 0;
    function dragging(on) {
      overlay.hidden = !on;
      drop.classList.toggle('over', on);
      document.body.classList.toggle('dragging', on);
    }
    window.addEventListener('dragenter', function (e) {
      if (!hasFiles(e)) return;
      e.preventDefault();
      dragDepth++;
      dragging(true);
    });
    window.addEventListener('dragover', function (e) {
      if (!hasFiles(e)) return;
      e.preventDefault();
      e.dataTransfer.dropEffect = 'copy';
    });
    window.addEventListener('dragleave', function () {
      dragDepth = Math.max(0, dragDepth - 1);
      if (!dragDepth) dragging(false);
    });
    window.addEventListener('drop', function (e) {
      dragDepth = 0;
      dragging(false);
      if (!e.dataTransfer) return;
      e.preventDefault();
      var files = Array.prototype.slice.call(e.dataTransfer.files || []);
      var img = files.filter(function (f) { return !f.type || /^image\//i.test(f.type); })[0];
      if (img) useFile(img, 'dropped');
      else if (files.length) useFile(files[0], 'dropped'); // says why it is not an image
      else say('Drop an image file (a picture dragged from another web page cannot be read here: save it first).', 'error');
    });

    document.addEventListener('paste', function (e) {
      var items = e.clipboardData ? Array.prototype.slice.call(e.clipboardData.items || []) : [];
      var item = items.filter(function (it) { return it.kind === 'file' && /^image\//i.test(it.type); })[0];
      if (item) {
        e.preventDefault();
        var f = item.getAsFile();
        if (f) useFile(f, 'pasted');
        return;
      }
      var t = e.target;
      var editing = t && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName));
      if (!editing) say('The clipboard holds no image: copy a picture or take a screenshot, then paste again.', 'error');
    });

    // -- options --
    backboneSel.addEventListener('change', function () { renderStats(); search(); });
    videoSel.addEventListener('change', search);
    topk.addEventListener('change', function () { if (validTopK() !== null) search(); });
    form.addEventListener('submit', function (e) { e.preventDefault(); search(); });

    document.addEventListener('keydown', function (e) {
      if (e.key === 'Escape' && !dlg.open && controller) { // cancel a running search
        controller.abort();
        searchSeq++;
        controller = null;
        setBusy(false);
        say('Search cancelled.', 'info');
      }
    });

    loadStats().then(function () { document.body.setAttribute('data-ready', '1'); });
  }

  document.addEventListener('DOMContentLoaded', function () {
    showErrors();
    start();
  });
})();

/*
 * agi_app supervisor dashboard (docs/dashboard.md): a wall screen fed by the
 * WebSocket with the snapshot of GET /api/dashboard.
 *
 * Opening it: /static/dashboard.html#token=sv1.… (a supervisor token from
 * POST /api/supervisorToken). The token is kept in this browser's storage and
 * taken out of the address bar at once; the page never holds an API key.
 * ?host=ws://HOST:PORT names the WebSocket (default: this host, port 10150).
 */
(function () {
  'use strict';

  var STORAGE_KEY = 'agi_app.dashboard.token';
  // The final statuses, bottom of the stack first, with what the wall says.
  var OUTCOMES = [
    ['FINISH', 'talked', '#2ea043'],
    ['CLIENT_BUSY', 'client busy', '#d29922'],
    ['CLIENT_NOANSWER', 'client no answer', '#e3b341'],
    ['CLIENT_CANCEL', 'client cancelled', '#db6d28'],
    ['OPERATOR_BUSY', 'operator busy', '#a371f7'],
    ['OPERATOR_NOANSWER', 'operator no answer', '#d2a8ff'],
    ['OPERATOR_OFFLINE', 'operator offline', '#6e7681'],
    ['ERROR', 'error', '#f85149']
  ];
  var ACTIVITY_TEXT = {
    offline: 'offline', idle: 'free', ringing: 'ringing', talking: 'talking',
    hold: 'on hold', listening: 'listening in'
  };
  var SVG = 'http://www.w3.org/2000/svg';

  var $ = function (id) { return document.getElementById(id); };
  var params = new URLSearchParams(location.search);
  var host = params.get('host') ||
      ((location.protocol === 'https:' ? 'wss://' : 'ws://') + (location.hostname || '127.0.0.1') + ':10150');

  var socket = null;
  var retry = 1000;
  var stopped = false;
  var last = null;          // the last snapshot
  var receivedAt = 0;       // Date.now() when it came
  var serverOffset = 0;     // server time - this browser's time, ms

  // -- the token: from the fragment (then out of sight), else storage ----------

  function takeToken() {
    var hash = new URLSearchParams(location.hash.replace(/^#/, ''));
    var given = hash.get('token');
    if (given) {
      try { localStorage.setItem(STORAGE_KEY, given); } catch (e) { /* private mode */ }
      history.replaceState(null, '', location.pathname + location.search);
      return given;
    }
    try { return localStorage.getItem(STORAGE_KEY); } catch (e) { return null; }
  }

  function askToken(reason) {
    stopped = true;
    $('login-reason').textContent = reason || 'This screen needs a supervisor token (see docs/dashboard.md).';
    $('login').hidden = false;
  }

  $('login').addEventListener('submit', function (e) {
    e.preventDefault();
    var token = $('token').value.trim();
    if (!token) return;
    try { localStorage.setItem(STORAGE_KEY, token); } catch (err) { /* private mode */ }
    $('login').hidden = true;
    stopped = false;
    connect(token);
  });

  // -- the connection ----------------------------------------------------------

  function setStatus(text, kind) {
    var el = $('status');
    el.textContent = text;
    el.className = 'status status-' + kind;
  }

  function connect(token) {
    setStatus('connecting', 'connecting');
    socket = new WebSocket(host);
    socket.onopen = function () {
      socket.send(JSON.stringify({type: 'hello', client_id: token, client_type: 'dashboard'}));
    };
    socket.onmessage = function (msg) {
      var data;
      try { data = JSON.parse(msg.data); } catch (e) { return; }
      if (data.type === 'welcome') {
        retry = 1000;
        setStatus('live', 'connected');
      } else if (data.type === 'dashboard') {
        show(data.dashboard);
      }
    };
    socket.onclose = function (e) {
      socket = null;
      if (e.code >= 4000 && e.code < 4100) {
        // refused: the token is wrong or expired; trying again would not help
        setStatus('refused', 'refused');
        try { localStorage.removeItem(STORAGE_KEY); } catch (err) { /* private mode */ }
        askToken('Refused: ' + (e.reason || 'invalid token') + '. Paste a new supervisor token.');
        return;
      }
      setStatus('reconnecting', 'disconnected');
      if (!stopped) {
        setTimeout(function () { connect(token); }, retry);
        retry = Math.min(retry * 2, 10000);
      }
    };
  }

  // -- drawing -------------------------------------------------------------------

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    for (var k in attrs) node.setAttribute(k, attrs[k]);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function svg(tag, attrs, text) {
    var node = document.createElementNS(SVG, tag);
    for (var k in attrs) node.setAttribute(k, attrs[k]);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function clock(seconds) {
    seconds = Math.max(0, Math.floor(seconds));
    var h = Math.floor(seconds / 3600), m = Math.floor(seconds / 60) % 60, s = seconds % 60;
    var mm = (h && m < 10 ? '0' : '') + m, ss = (s < 10 ? '0' : '') + s;
    return (h ? h + ':' : '') + mm + ':' + ss;
  }

  function elapsed() { return (Date.now() - receivedAt) / 1000; }

  function show(snapshot) {
    last = snapshot;
    receivedAt = Date.now();
    serverOffset = Date.parse(snapshot.time) - receivedAt;
    var counts = snapshot.operator_counts;
    $('count-calls').textContent = snapshot.calls.length;
    $('count-online').textContent = counts.online;
    $('count-inuse').textContent = counts.inuse;
    $('count-offline').textContent = counts.offline;
    $('outcome-total').textContent = snapshot.outcome_totals.total;
    drawOperators(snapshot.operators);
    drawCalls(snapshot.calls);
    drawChart(snapshot.outcomes, snapshot.outcome_totals);
    drawHooks(snapshot.webhooks);
    tick();
  }

  function drawOperators(operators) {
    var box = $('operators');
    box.textContent = '';
    operators.forEach(function (o) {
      var tile = el('div', {'class': 'tile ' + o.activity, 'data-sip': o.sip,
                            'data-status': o.status, 'data-activity': o.activity});
      tile.appendChild(el('div', {'class': 'sip'}, o.sip));
      tile.appendChild(el('div', {'class': 'what'}, ACTIVITY_TEXT[o.activity] || o.activity));
      tile.appendChild(el('div', {'class': 'for', 'data-since': o.since}, ''));
      box.appendChild(tile);
    });
    // every operator must stay on the screen: smaller tiles while they overflow
    box.className = 'tiles';
    ['dense', 'denser'].forEach(function (size) {
      if (box.scrollHeight > box.clientHeight + 1) box.classList.add(size);
    });
  }

  function drawCalls(calls) {
    var body = $('calls').tBodies[0];
    body.textContent = '';
    calls.forEach(function (c) {
      var row = el('tr', {'data-call-api-id': c.call_api_id, 'data-extension': c.extension || '',
                          'data-state': c.state, 'data-duration': c.duration_s});
      row.appendChild(el('td', {'class': 'ext'}, c.extension || '—'));
      row.appendChild(el('td', {'class': 'dir', title: c.direction === 'in' ? 'incoming' : 'outgoing'},
                         c.direction === 'in' ? '←' : '→'));
      row.appendChild(el('td', {'class': 'number'}, c.number || c.other_extension || 'unknown'));
      var state = el('td');
      state.appendChild(el('span', {'class': 'state ' + c.state}, c.state));
      row.appendChild(state);
      row.appendChild(el('td', {'class': 'num duration'}, clock(c.duration_s)));
      body.appendChild(row);
    });
    $('no-calls').hidden = calls.length > 0;
    // more calls than the panel holds: the oldest stay, the rest are counted
    var panel = document.querySelector('.panel.calls');
    var more = $('more-calls');
    more.hidden = true;
    var hidden = 0;
    for (var i = body.rows.length - 1; i > 0 && panel.scrollHeight > panel.clientHeight + 1; i--) {
      body.rows[i].hidden = true;
      hidden++;
      more.textContent = '+ ' + hidden + ' more';
      more.hidden = false;
    }
  }

  function hoursOf(outcomes) {
    // every hour of the range, with the counts callStats gave (none: zero)
    var byHour = {};
    outcomes.hours.forEach(function (h) { byHour[Date.parse(h.hour)] = h; });
    var out = [];
    for (var t = Date.parse(outcomes.from); t < Date.parse(outcomes.to); t += 3600000) {
      out.push({start: t, counts: byHour[t] || null});
    }
    return out;
  }

  function drawChart(outcomes, totals) {
    var hours = hoursOf(outcomes);
    var box = $('chart');
    var width = Math.max(box.clientWidth, 600), height = Math.max(box.clientHeight, 200);
    var left = 50, bottom = 30, top = 26;
    var most = 1;
    hours.forEach(function (h) { if (h.counts && h.counts.total > most) most = h.counts.total; });
    var step = (width - left) / Math.max(hours.length, 1);
    var barWidth = Math.min(step * 0.7, 60);
    var scale = (height - bottom - top) / most;
    var chart = svg('svg', {viewBox: '0 0 ' + width + ' ' + height, role: 'img',
                            'aria-label': 'calls per hour by final status'});
    var ticks = most <= 5 ? most : 4;
    for (var i = 0; i <= ticks; i++) {
      var value = Math.round(most * i / ticks);
      var y = height - bottom - value * scale;
      chart.appendChild(svg('line', {'class': 'grid-line', x1: left, x2: width, y1: y, y2: y}));
      chart.appendChild(svg('text', {x: left - 10, y: y + 5, 'text-anchor': 'end'}, value));
    }
    var labelEvery = hours.length > 16 ? 2 : 1;
    hours.forEach(function (h, n) {
      var x = left + n * step + (step - barWidth) / 2;
      var group = svg('g', {'class': 'bar', 'data-hour': new Date(h.start).toISOString(),
                            'data-total': h.counts ? h.counts.total : 0});
      var y = height - bottom;
      OUTCOMES.forEach(function (o) {
        var count = h.counts ? h.counts[o[0]] : 0;
        if (!count) return;
        var tall = count * scale;
        y -= tall;
        var rect = svg('rect', {x: x, y: y, width: barWidth, height: tall, fill: o[2], rx: 3,
                                'data-status': o[0], 'data-count': count});
        rect.appendChild(svg('title', {}, o[1] + ': ' + count));
        group.appendChild(rect);
      });
      if (h.counts && h.counts.total) {
        group.appendChild(svg('text', {'class': 'count', x: x + barWidth / 2, y: y - 6,
                                       'text-anchor': 'middle'}, h.counts.total));
      }
      if (n % labelEvery === 0) {
        var d = new Date(h.start);
        var label = (d.getHours() < 10 ? '0' : '') + d.getHours() + ':00';  // local time
        group.appendChild(svg('text', {x: x + barWidth / 2, y: height - 6, 'text-anchor': 'middle'}, label));
      }
      chart.appendChild(group);
    });
    box.textContent = '';
    box.appendChild(chart);
    var legend = $('legend');
    legend.textContent = '';
    OUTCOMES.forEach(function (o) {
      var item = el('li', {'data-status': o[0], 'data-count': totals[o[0]]});
      item.appendChild(el('span', {'class': 'swatch', style: 'background:' + o[2]}));
      item.appendChild(el('span', {}, o[1]));
      item.appendChild(el('span', {'class': 'n'}, totals[o[0]]));
      legend.appendChild(item);
    });
    var from = new Date(Date.parse(outcomes.from));
    $('chart-range').textContent = '(since ' + from.toLocaleTimeString([], {hour: '2-digit', minute: '2-digit', hour12: false}) + ')';
  }

  function drawHooks(hooks) {
    var known = hooks !== null && hooks !== undefined;
    $('webhook-backlog').textContent = known ? hooks.backlog : '?';
    $('hooks-backlog').textContent = known ? hooks.backlog : '?';
    $('hooks-age').textContent = known ? clock(hooks.oldest_age_s) : '?';
    $('hooks-given-up').textContent = known ? hooks.given_up : '?';
    var alert = !known || hooks.backlog > 0 && hooks.oldest_age_s > 60;
    $('webhooks').classList.toggle('alert', alert);
    document.querySelector('.hooks').classList.toggle('alert', alert);
  }

  // Durations and the clock move every second between snapshots.
  function tick() {
    var now = new Date(Date.now() + serverOffset);
    $('clock').textContent = now.toLocaleTimeString([], {hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false});
    if (!last) return;
    var moved = elapsed();
    var rows = $('calls').tBodies[0].rows;
    for (var i = 0; i < rows.length; i++) {
      var base = Number(rows[i].getAttribute('data-duration'));
      rows[i].querySelector('.duration').textContent = clock(base + moved);
    }
    var fors = document.querySelectorAll('#operators .for');
    var snapshotTime = Date.parse(last.time);
    for (var j = 0; j < fors.length; j++) {
      var since = Date.parse(fors[j].getAttribute('data-since'));
      fors[j].textContent = isNaN(since) ? '' : 'for ' + clock((snapshotTime - since) / 1000 + moved);
    }
  }

  setInterval(tick, 1000);
  window.addEventListener('resize', function () { if (last) drawChart(last.outcomes, last.outcome_totals); });

  var token = takeToken();
  if (token) connect(token); else askToken();
})();

/* The demo page: a softphone-style panel on top of prostiezvonki.js.
 * Query parameters fill the form: ?host=ws://...&client_id=...&phone=1000&connect=1
 *
 * With client_id left empty the page asks the server that served it for a
 * widget token of the extension (POST /api/widgetToken). That works where
 * the HTTP API is open (loopback, no API keys, as under `make run`); a real
 * CRM page gets its token from the CRM's own server, which keeps the API
 * key, and never shows a key to the browser. */
(function () {
    'use strict';
    var $ = function (id) { return document.getElementById(id); };
    var params = new URLSearchParams(location.search);
    var current = null;  // the call shown in the incoming popup
    var minted = false;  // the client_id in use is a token this page asked for

    $('host').value = params.get('host') || ('ws://' + (location.hostname || '127.0.0.1') + ':10150');
    $('client_id').value = params.get('client_id') || '';
    $('user_phone').value = params.get('phone') || '';

    function say(text, isError) {
        $('message').textContent = text;
        $('message').className = 'message' + (isError ? ' error' : '');
    }

    function time(ts) {
        if (!ts) { return ''; }
        return new Date(ts * 1000).toLocaleTimeString();
    }

    function talk(seconds) {
        var m = Math.floor(seconds / 60), s = seconds % 60;
        return m + ':' + (s < 10 ? '0' : '') + s;
    }

    pz.onStatus(function (name, reason) {
        var el = $('status');
        el.textContent = name + (name === 'refused' && reason ? ': ' + reason : '');
        el.className = 'status status-' + name;
        if (name === 'refused' && reason === 'token expired' && minted) {
            connect();  // a token this page asked for: ask for a fresh one
        }
    });

    /* A token for `sip` from this page's own server. */
    function fetchToken(sip) {
        return fetch('/api/widgetToken', {
            method: 'POST',
            headers: {'Content-Type': 'application/json'},
            body: JSON.stringify({sip: sip, ttl: 3600})
        }).then(function (response) {
            return response.json().then(function (body) {
                if (!response.ok) {
                    var error = body && body.error || {};
                    throw new Error(error.message || ('HTTP ' + response.status));
                }
                return body.client_id;
            });
        });
    }

    function connect() {
        var phone = $('user_phone').value.trim();
        var host = $('host').value.trim();
        var given = $('client_id').value.trim();
        pz.setUserPhone(phone);
        if (given && !minted) {
            pz.connect({host: host, client_id: given, client_type: 'demo'});
            return;
        }
        say('Asking the server for a token of ' + (phone || '?') + '\u2026');
        fetchToken(phone).then(function (token) {
            minted = true;
            $('client_id').value = token;
            say('');
            pz.connect({host: host, client_id: token, client_type: 'demo'});
        }, function (error) {
            say('No token: ' + error.message, true);
        });
    }

    pz.onEvent(function (event) {
        if (event.isIncoming() || event.isTransfer()) {
            current = event;
            $('incoming-kind').textContent = event.isTransfer() ? 'Transferred to you' : 'Incoming call';
            $('incoming-from').textContent = event.from || 'unknown';
            $('incoming-to').textContent = event.to || '';
            $('incoming').hidden = false;
        } else if (event.isHistory()) {
            if (current && current.callID === event.callID) {
                $('incoming').hidden = true;
                current = null;
            }
            addHistory(event);
        }
    });

    function addHistory(event) {
        var row = document.createElement('tr');
        var cells = [event.direction === 1 ? '\u2197' : '\u2199', event.from || '', event.to || '',
                     time(event.start), talk(event.duration || 0)];
        cells.forEach(function (text, i) {
            var td = document.createElement('td');
            td.textContent = text;
            if (i === 0) { td.className = 'dir'; td.title = event.direction === 1 ? 'outgoing' : 'incoming'; }
            row.appendChild(td);
        });
        var rec = document.createElement('td');
        if (event.record) {
            var a = document.createElement('a');
            a.href = event.record;
            a.textContent = 'listen';
            a.target = '_blank';
            rec.appendChild(a);
        }
        row.appendChild(rec);
        var body = document.querySelector('#history tbody');
        body.insertBefore(row, body.firstChild);
        $('no-calls').hidden = true;
    }

    $('settings').addEventListener('submit', function (e) {
        e.preventDefault();
        connect();
    });
    $('client_id').addEventListener('input', function () { minted = false; });
    $('user_phone').addEventListener('input', function () {
        if (minted) { minted = false; $('client_id').value = ''; }  // that token names the old one
    });
    $('disconnect').addEventListener('click', function () { pz.disconnect(); });

    $('dial').addEventListener('submit', function (e) {
        e.preventDefault();
        var number = $('number').value.trim();
        if (!number) { return; }
        say('Calling ' + number + ': your phone rings first\u2026');
        pz.call(number).then(function (answer) {
            say('Call ' + answer.call_id + ' placed.');
        }, function (error) {
            say(error.message, true);
        });
    });

    $('transfer').addEventListener('submit', function (e) {
        e.preventDefault();
        var to = $('transfer-to').value.trim();
        if (!current || !to) { return; }
        pz.transfer(current.callID, to).then(function () {
            say('Transferred to ' + to + '.');
        }, function (error) {
            say(error.message, true);
        });
    });

    if (params.get('connect') === '1') {
        $('settings').requestSubmit();
    }
}());

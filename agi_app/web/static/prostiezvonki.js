/*
 * prostiezvonki.js: the browser widget of agi_app.
 *
 * Loaded in a page it creates the global `prostiezvonki` and its alias `pz`:
 *
 *   pz.setUserPhone('1000');
 *   pz.connect({host: 'ws://localhost:10150', client_id: 'password', client_type: 'tinycrm'});
 *   pz.onEvent(function (event) { alert('Call ' + event.callID); });
 *   pz.call('380501234567');
 *   pz.transfer(callID, '1001');
 *   pz.disconnect();
 *
 * Events: event.type 1 (incoming transfer request), 2 (incoming call to the
 * manager), 3 (finished call); event.isTransfer(), isIncoming(), isHistory();
 * event.callID, from, to and, for finished calls, start, end (unix
 * timestamps), duration (s), direction (0 incoming, 1 outgoing), record.
 *
 * Beyond that API: call() and transfer() return a Promise (resolved with the
 * server's answer, rejected with an Error whose `code` says why);
 * pz.onStatus(callback) reports the connection state ('connecting',
 * 'connected', 'disconnected', 'refused') with a reason; pz.isConnected().
 * A connection that drops is opened again (1 s, doubling up to 30 s); one
 * the server refused (close codes 4000-4099: wrong client_id, expired
 * token, another extension than the token's) is not.
 *
 * client_id is a widget token (v1.<sip>.<expires>.<signature>, minted by the
 * CRM's server for the user's extension) or, while the server listens on
 * loopback only, one of its static client ids.
 *
 * The JSON wire protocol is described in docs/widget.md.
 */
(function (root) {
    'use strict';

    // 4000 hello expected, 4001 invalid client_id or token, 4002 token
    // expired, 4003 another extension than the token's: the server's refusals.
    var REFUSED_FIRST = 4000;
    var REFUSED_LAST = 4099;
    var MIN_RETRY = 1000;
    var MAX_RETRY = 30000;
    var REQUEST_TIMEOUT = 30000;

    function PzEvent(data) {
        for (var key in data) {
            if (Object.prototype.hasOwnProperty.call(data, key)) {
                this[key] = data[key];
            }
        }
    }
    PzEvent.prototype.isTransfer = function () { return this.type === 1; };
    PzEvent.prototype.isIncoming = function () { return this.type === 2; };
    PzEvent.prototype.isHistory = function () { return this.type === 3; };

    function WidgetError(code, message) {
        var error = new Error(message || code);
        error.code = code;
        return error;
    }

    var state = {
        socket: null,
        options: null,
        userPhone: null,
        wanted: false,        // connect() called and not disconnect()
        connected: false,     // welcome received
        retryDelay: MIN_RETRY,
        retryTimer: null,
        nextId: 1,
        pending: {},          // request id -> {resolve, reject, timer}
        eventCallbacks: [],
        statusCallbacks: []
    };

    function status(name, reason) {
        for (var i = 0; i < state.statusCallbacks.length; i++) {
            try { state.statusCallbacks[i](name, reason || ''); } catch (e) { logError(e); }
        }
    }

    function logError(e) {
        if (root.console && root.console.error) { root.console.error('prostiezvonki:', e); }
    }

    function send(message) {
        if (!state.socket || state.socket.readyState !== 1) { return false; }
        state.socket.send(JSON.stringify(message));
        return true;
    }

    function request(message) {
        return new Promise(function (resolve, reject) {
            if (!state.connected) {
                reject(WidgetError('not_connected', 'not connected to the server'));
                return;
            }
            var id = state.nextId++;
            message.id = id;
            var timer = setTimeout(function () {
                delete state.pending[id];
                reject(WidgetError('timeout', 'the server did not answer'));
            }, REQUEST_TIMEOUT);
            state.pending[id] = {resolve: resolve, reject: reject, timer: timer};
            send(message);
        });
    }

    function settle(message) {
        var entry = state.pending[message.id];
        if (!entry) { return false; }
        delete state.pending[message.id];
        clearTimeout(entry.timer);
        if (message.type === 'result') {
            entry.resolve(message);
        } else {
            entry.reject(WidgetError(message.code, message.message));
        }
        return true;
    }

    function failPending(code, text) {
        var pending = state.pending;
        state.pending = {};
        for (var id in pending) {
            if (Object.prototype.hasOwnProperty.call(pending, id)) {
                clearTimeout(pending[id].timer);
                pending[id].reject(WidgetError(code, text));
            }
        }
    }

    function dispatch(data) {
        var event = new PzEvent(data);
        for (var i = 0; i < state.eventCallbacks.length; i++) {
            try { state.eventCallbacks[i](event); } catch (e) { logError(e); }
        }
    }

    function onMessage(raw) {
        var message;
        try { message = JSON.parse(raw.data); } catch (e) { logError(e); return; }
        if (!message || typeof message !== 'object') { return; }
        if (message.type === 'welcome') {
            state.connected = true;
            state.retryDelay = MIN_RETRY;
            status('connected', message.server);
        } else if (message.type === 'event' && message.event) {
            dispatch(message.event);
        } else if ((message.type === 'result' || message.type === 'error') && message.id != null) {
            settle(message);
        } else if (message.type === 'error') {
            logError(message.code + ': ' + message.message);
        }
    }

    function open() {
        var options = state.options;
        var socket;
        state.retryTimer = null;
        status('connecting');
        try {
            socket = new root.WebSocket(options.host);
        } catch (e) {
            status('disconnected', String(e && e.message || e));
            retry();
            return;
        }
        state.socket = socket;
        socket.onopen = function () {
            var hello = {type: 'hello', client_id: options.client_id,
                         client_type: options.client_type || ''};
            if (state.userPhone) { hello.user_phone = state.userPhone; }
            send(hello);
        };
        socket.onmessage = onMessage;
        socket.onclose = function (close) {
            if (state.socket !== socket) { return; }
            state.socket = null;
            state.connected = false;
            failPending('disconnected', 'the connection was closed');
            if (close.code >= REFUSED_FIRST && close.code <= REFUSED_LAST) {
                // Refused: trying again with the same client_id cannot help.
                state.wanted = false;
                status('refused', close.reason || ('closed with code ' + close.code));
                return;
            }
            status('disconnected', close.reason || ('closed with code ' + close.code));
            retry();
        };
        socket.onerror = function () { /* onclose follows and says what to do */ };
    }

    function retry() {
        if (!state.wanted || state.retryTimer) { return; }
        var delay = state.retryDelay;
        state.retryDelay = Math.min(MAX_RETRY, state.retryDelay * 2);
        state.retryTimer = setTimeout(open, delay);
    }

    function close() {
        if (state.retryTimer) { clearTimeout(state.retryTimer); state.retryTimer = null; }
        var socket = state.socket;
        state.socket = null;
        state.connected = false;
        if (socket) {
            try { socket.close(1000, 'disconnect'); } catch (e) { logError(e); }
        }
        failPending('disconnected', 'disconnected');
    }

    var prostiezvonki = {
        /** The extension of the employee using the page. */
        setUserPhone: function (phone) {
            state.userPhone = phone == null ? null : String(phone);
            if (state.connected) {
                send({type: 'set_phone', phone: state.userPhone});
            }
        },

        /** Connect to the server: {host, client_id, client_type}. */
        connect: function (options) {
            if (!options || !options.host) { throw new Error('connect() needs {host, client_id}'); }
            close();
            state.options = {host: options.host, client_id: options.client_id,
                             client_type: options.client_type};
            state.wanted = true;
            state.retryDelay = MIN_RETRY;
            open();
        },

        /** Close the connection; no reconnection. */
        disconnect: function () {
            state.wanted = false;
            close();
            status('disconnected', 'disconnect()');
        },

        /** Ring the user's phone, then connect it with `phone`. */
        call: function (phone) {
            return request({type: 'call', phone: String(phone)});
        },

        /** Transfer the user's call `call_id` to `phone`. */
        transfer: function (call_id, phone) {
            return request({type: 'transfer', call_id: String(call_id), phone: String(phone)});
        },

        /** `callback(event)` for every event from the server. */
        onEvent: function (callback) {
            if (typeof callback === 'function') { state.eventCallbacks.push(callback); }
        },

        /** `callback(status, reason)` for every change of the connection. */
        onStatus: function (callback) {
            if (typeof callback === 'function') { state.statusCallbacks.push(callback); }
        },

        /** True once the server accepted the connection. */
        isConnected: function () { return state.connected; },

        Event: PzEvent
    };

    root.prostiezvonki = prostiezvonki;
    root.pz = prostiezvonki;
}(typeof window !== 'undefined' ? window : this));

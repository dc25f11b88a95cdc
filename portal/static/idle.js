'use strict';

// Sign-out after inactivity (portal/idle.py): a banner IDLE warning seconds before the server
// signs this page's session out, with "Stay signed in". Before warning it asks the server
// (GET /session/status, which does not count as activity): another tab may have been busy.
// When the time is up it asks the server once more, then goes to the sign-in page, which says why.

(() => {
  const TICK_MS = 1000;
  const script = document.currentScript;
  const settings = {
    warningMs: Number(script.dataset.warningSeconds) * 1000,
    statusUrl: script.dataset.statusUrl,
    keepAliveUrl: script.dataset.keepAliveUrl,
    loginUrl: script.dataset.loginUrl,
    csrf: script.dataset.csrf,
  };
  const state = {
    deadline: Date.now() + Number(script.dataset.expiresIn) * 1000,
    checking: false,
    checkedAt: 0,
    leaving: false,
  };
  const banner = document.getElementById('idle-warning');
  const text = document.getElementById('idle-warning-text');
  const stay = document.getElementById('idle-stay');

  function secondsLeft() {
    return Math.max(0, Math.ceil((state.deadline - Date.now()) / 1000));
  }

  function showWarning() {
    const left = secondsLeft();
    const clock = `${Math.floor(left / 60)}:${String(left % 60).padStart(2, '0')}`;
    text.textContent = `You will be signed out in ${clock} because of inactivity.`;
    if (banner.hidden) {
      banner.hidden = false;
      stay.focus();
    }
  }

  function hideWarning() {
    banner.hidden = true;
  }

  // Once only: the sign-in page shows the reason once, so a second navigation started by a later
  // tick (while the first page is still loading) would replace it with a page without it.
  function signedOut() {
    if (state.leaving) return;
    state.leaving = true;
    clearInterval(timer);
    window.location.assign(settings.loginUrl);
  }

  async function ask(url, init) {
    try {
      const response = await fetch(url, { credentials: 'same-origin', cache: 'no-store', ...init });
      if (response.status === 401) {
        signedOut();
        return;
      }
      if (response.ok) {
        const body = await response.json();
        state.deadline = Date.now() + Number(body.expires_in) * 1000;
      }
    } catch {
      // Offline for a moment: keep counting; the server decides in the end.
    }
  }

  async function check() {
    state.checking = true;
    state.checkedAt = Date.now();
    await ask(settings.statusUrl, { headers: { Accept: 'application/json' } });
    state.checking = false;
  }

  async function staySignedIn() {
    stay.disabled = true;
    await ask(settings.keepAliveUrl, {
      method: 'POST',
      headers: { Accept: 'application/json', 'X-CSRF-Token': settings.csrf },
    });
    stay.disabled = false;
    tick();
  }

  function tick() {
    if (state.leaving) return;
    const left = state.deadline - Date.now();
    if (left > settings.warningMs) {
      hideWarning();
      return;
    }
    if (!state.checking && Date.now() - state.checkedAt > settings.warningMs / 2) {
      check().then(tick);
      return;
    }
    if (left <= 0) {
      // The server decides: its clock may be a moment behind ours, and a page of the sign-in
      // screen asked for too early would find the session still live and say nothing. It answers
      // 401 once the session is over (and keeps the reason for the sign-in page); until then ask
      // again each second.
      if (!state.checking) check();
      return;
    }
    showWarning();
  }

  stay.addEventListener('click', staySignedIn);
  const timer = setInterval(tick, TICK_MS);
})();

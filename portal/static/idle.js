'use strict';

// Sign-out after inactivity (portal/idle.py): a banner IDLE warning seconds before the server
// signs this page's session out, with "Stay signed in". Before warning it asks the server
// (GET /session/status, which does not count as activity): another tab may have been busy.
// When the time is up it goes to the sign-in page, which says why.

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

  function signedOut() {
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
      signedOut();
      return;
    }
    showWarning();
  }

  stay.addEventListener('click', staySignedIn);
  setInterval(tick, TICK_MS);
})();

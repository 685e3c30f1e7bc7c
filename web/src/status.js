// What the tab shows of the builds: the title and the favicon turn red
// when a project's latest build failed; and, when the user asked for them,
// browser notifications for broken and fixed builds.

import { statusInfo } from './format.js';

const colours = { bad: '#d1242f', run: '#bf8700', ok: '#1a7f37', idle: '#8a8f98' };

function icon(tone) {
  const c = colours[tone];
  const mark = tone === 'bad'
    ? "<path d='M5 5l6 6M11 5l-6 6' stroke='white' stroke-width='2' stroke-linecap='round'/>"
    : tone === 'ok' ? "<path d='M4.5 8.5l2.5 2.5 4.5-5' stroke='white' stroke-width='2' fill='none' stroke-linecap='round'/>" : '';
  const svg = `<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'><circle cx='8' cy='8' r='7.5' fill='${c}'/>${mark}</svg>`;
  return 'data:image/svg+xml,' + encodeURIComponent(svg);
}

let lastIcon = '';

// showTabStatus sets the title (page is the current page's own title) and
// the favicon from the model.
export function showTabStatus(model, page) {
  const failing = model.failing();
  const running = model.running();
  let tone = 'idle';
  if (failing.length) tone = 'bad';
  else if (running) tone = 'run';
  else if (model.builds.size) tone = 'ok';
  const prefix = failing.length ? `✖ ${failing.length} failing · ` : '';
  document.title = `${prefix}${page ? page + ' · ' : ''}buildbridge`;
  const href = icon(tone);
  if (href !== lastIcon) {
    lastIcon = href;
    let link = document.querySelector('link[rel="icon"]');
    if (!link) {
      link = document.createElement('link');
      link.rel = 'icon';
      document.head.append(link);
    }
    link.type = 'image/svg+xml';
    link.href = href;
    link.dataset.tone = tone;
  }
}

const PREF = 'buildbridge.notify';

export function notificationsSupported() {
  return 'Notification' in window;
}

export function notificationsOn() {
  return notificationsSupported() && Notification.permission === 'granted' && localStorage.getItem(PREF) === 'on';
}

// toggleNotifications asks for permission the first time; it returns
// whether notifications are on afterwards.
export async function toggleNotifications() {
  if (!notificationsSupported()) return false;
  if (notificationsOn()) {
    localStorage.setItem(PREF, 'off');
    return false;
  }
  let perm = Notification.permission;
  if (perm === 'default') perm = await Notification.requestPermission();
  if (perm !== 'granted') return false;
  localStorage.setItem(PREF, 'on');
  return true;
}

// notifyChange shows a notification when a build broke or was fixed.
export function notifyChange(build, onOpen) {
  if (build.state !== 'FINISHED' || (build.status !== 'broken' && build.status !== 'fixed')) return;
  if (!notificationsOn()) return;
  const label = statusInfo[build.status].label;
  const n = new Notification(`${build.project} #${build.number} ${label}`, {
    body: `${build.branch || build.ref}: ${(build.message || '').split('\n')[0]}`,
    tag: `buildbridge-${build.project}-${build.branch}`,
    icon: icon(build.status === 'broken' ? 'bad' : 'ok'),
  });
  n.onclick = () => {
    window.focus();
    onOpen(build.id);
    n.close();
  };
}

'use strict';

// "Scan ID" on Find a patient: reads the QR code of the "My ID" screen of a patient's app
// with the device camera, fills the search field and searches. Only where the browser offers
// BarcodeDetector (with QR codes) and a camera; elsewhere the button stays hidden and the id
// is typed or pasted. Nothing leaves the browser but the search itself.

const ID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const QR_FORMAT = 'qr_code';
const SCAN_INTERVAL_MS = 200;
const CAMERA = { audio: false, video: { facingMode: { ideal: 'environment' } } };
const MESSAGES = {
  starting: 'Starting the camera…',
  looking: 'Looking for a QR code…',
  notAnId: 'This QR code is not a patient id. Show the “My ID” screen of the patient’s app.',
  denied: 'The camera was not allowed or is not available: type or paste the patient id instead.',
};

const scan = {
  form: null,
  input: null,
  panel: null,
  video: null,
  status: null,
  detector: null,
  stream: null,
  timer: null,
};

async function canScan() {
  if (!('BarcodeDetector' in window) || !navigator.mediaDevices?.getUserMedia) {
    return false;
  }
  try {
    return (await window.BarcodeDetector.getSupportedFormats()).includes(QR_FORMAT);
  } catch {
    return false;
  }
}

async function setUp() {
  const button = document.getElementById('scan-id');
  if (!button || !(await canScan())) {
    return;
  }
  scan.form = document.getElementById('find-patient');
  scan.input = scan.form.elements.namedItem('q');
  scan.panel = document.getElementById('scanner');
  scan.video = document.getElementById('scanner-video');
  scan.status = document.getElementById('scanner-status');
  button.addEventListener('click', startScanning);
  document.getElementById('scanner-cancel').addEventListener('click', stopScanning);
  window.addEventListener('pagehide', stopScanning);
  button.hidden = false;
}

async function startScanning() {
  stopScanning();
  scan.panel.hidden = false;
  scan.status.textContent = MESSAGES.starting;
  try {
    scan.detector = scan.detector ?? new window.BarcodeDetector({ formats: [QR_FORMAT] });
    scan.stream = await navigator.mediaDevices.getUserMedia(CAMERA);
    scan.video.srcObject = scan.stream;
    await scan.video.play();
  } catch {
    stopCamera();
    scan.status.textContent = MESSAGES.denied;
    return;
  }
  scan.status.textContent = MESSAGES.looking;
  scheduleDetection();
}

function scheduleDetection() {
  scan.timer = setTimeout(detectOnce, SCAN_INTERVAL_MS);
}

async function detectOnce() {
  if (!scan.stream) {
    return;
  }
  let codes = [];
  try {
    codes = await scan.detector.detect(scan.video);
  } catch {
    // A frame the detector could not read (the camera still starting): try the next one.
  }
  if (!scan.stream) {
    return;
  }
  const id = codes.map((code) => String(code.rawValue ?? '').trim()).find((value) => ID_PATTERN.test(value));
  if (id) {
    found(id);
    return;
  }
  scan.status.textContent = codes.length ? MESSAGES.notAnId : MESSAGES.looking;
  scheduleDetection();
}

function found(id) {
  stopScanning();
  scan.input.value = id.toLowerCase();
  scan.form.requestSubmit();
}

function stopCamera() {
  clearTimeout(scan.timer);
  scan.timer = null;
  scan.stream?.getTracks().forEach((track) => track.stop());
  scan.stream = null;
  if (scan.video) {
    scan.video.srcObject = null;
  }
}

function stopScanning() {
  stopCamera();
  if (scan.panel) {
    scan.panel.hidden = true;
    scan.status.textContent = '';
  }
}

setUp();

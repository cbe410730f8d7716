#!/usr/bin/env node
// A browser as an MQTT client, for brokk's end-to-end test tests/e2e/browser.rs.
//
//   node tests/clients/js/browser.js --url wss://127.0.0.1:PORT/mqtt --topic T \
//        --payload P --cert server.pem --ca ca.pem [--version 4|5]
//
// Starts Debian's chromium headless through puppeteer-core (which downloads no
// browser: the binary is $CHROMIUM, default /usr/bin/chromium), opens
// browser/index.html as a file:// URL, where MQTT.js subscribes to T, publishes P
// and shows the message that comes back in #received. Prints
//
//   received: P
//   browser: <chromium's version>
//
// on stdout and exits 0 when the page shows P; prints the page's log on stderr and
// exits 1 otherwise (an error, a refused subscription, or nothing within 20 s).
//
// Trust: chromium has no option to add a root CA for one run (on Linux it reads
// trust anchors from the user's NSS database). Instead this script checks with
// node's crypto that the broker's certificate (--cert) is signed by the test CA
// (--ca) and names the URL's host, then tells chromium to accept exactly that
// certificate's key: --ignore-certificate-errors-spki-list=<base64 SHA-256 of its
// SubjectPublicKeyInfo>. Any other certificate still fails the TLS handshake.
'use strict'

const crypto = require('node:crypto')
const fs = require('node:fs')
const path = require('node:path')
const { parseArgs } = require('node:util')
const { pathToFileURL } = require('node:url')
const puppeteer = require('puppeteer-core')

/** How long the page may take to show the message, from the moment it loads. */
const PAGE_LIMIT_MS = 20000
/** The whole run, browser start and shutdown included. */
const TOTAL_LIMIT_MS = 45000

const die = (why, code = 1) => {
  console.error(`browser.js: ${why}`)
  process.exit(code)
}

let opts
try {
  opts = parseArgs({
    options: {
      url: { type: 'string' },
      topic: { type: 'string' },
      payload: { type: 'string' },
      cert: { type: 'string' },
      ca: { type: 'string' },
      version: { type: 'string', default: '5' }
    }
  }).values
} catch (e) {
  die(e.message, 2)
}
if (!opts.url || !opts.topic || !opts.payload || !opts.cert || !opts.ca) {
  die('usage: node browser.js --url wss://HOST:PORT/mqtt --topic T --payload P --cert server.pem --ca ca.pem [--version 4|5]', 2)
}

/** base64 SHA-256 of the SubjectPublicKeyInfo of the certificate at `certPath`,
 * after checking it is issued by the CA at `caPath` for the host of `url`. */
function pinnedSpki (certPath, caPath, url) {
  const cert = new crypto.X509Certificate(fs.readFileSync(certPath))
  const ca = new crypto.X509Certificate(fs.readFileSync(caPath))
  if (!cert.checkIssued(ca) || !cert.verify(ca.publicKey)) {
    die(`${certPath} is not signed by the CA in ${caPath}`)
  }
  const now = Date.now()
  if (now < Date.parse(cert.validFrom) || now > Date.parse(cert.validTo)) {
    die(`${certPath} is not valid now (${cert.validFrom} .. ${cert.validTo})`)
  }
  const host = new URL(url).hostname.replace(/^\[(.*)\]$/, '$1')
  const isIp = /^[0-9.]+$/.test(host) || host.includes(':')
  if (!(isIp ? cert.checkIP(host) : cert.checkHost(host))) {
    die(`${certPath} does not name ${host} (${cert.subjectAltName})`)
  }
  const spki = cert.publicKey.export({ type: 'spki', format: 'der' })
  return crypto.createHash('sha256').update(spki).digest('base64')
}

async function main () {
  const executablePath = process.env.CHROMIUM || '/usr/bin/chromium'
  if (!fs.existsSync(executablePath)) {
    die(`${executablePath} not found: run scripts/install-clients.sh (it installs Debian's chromium)`)
  }
  const spki = pinnedSpki(opts.cert, opts.ca, opts.url)

  const page = pathToFileURL(path.join(__dirname, 'browser', 'index.html'))
  page.search = new URLSearchParams({
    url: opts.url,
    topic: opts.topic,
    payload: opts.payload,
    version: opts.version
  }).toString()

  const browser = await puppeteer.launch({
    executablePath,
    headless: true,
    // DevTools over a pipe rather than a port: nothing else listens, and chromium
    // exits when this process dies and the pipe closes.
    pipe: true,
    args: [
      // The test runs as root, where chromium refuses to start with its sandbox.
      '--no-sandbox',
      `--ignore-certificate-errors-spki-list=${spki}`,
      '--disable-gpu',
      '--disable-dev-shm-usage',
      '--no-first-run'
    ],
    timeout: 30000
  })
  const pageLog = []
  try {
    const tab = await browser.newPage()
    tab.on('console', (m) => pageLog.push(`console.${m.type()}: ${m.text()}`))
    tab.on('pageerror', (e) => pageLog.push(`page error: ${e.message}`))
    tab.on('requestfailed', (r) => pageLog.push(`request failed: ${r.url()}: ${r.failure()?.errorText}`))
    await tab.goto(page.href, { waitUntil: 'load' })
    let state
    try {
      await tab.waitForFunction(
        () => ['received', 'failed'].includes(document.body.dataset.state),
        { timeout: PAGE_LIMIT_MS, polling: 100 }
      )
    } catch (e) {
      pageLog.push(`waiting for the page: ${e.message}`)
    } finally {
      state = await tab.evaluate(() => ({
        state: document.body.dataset.state,
        received: document.getElementById('received').textContent,
        log: document.getElementById('log').textContent
      }))
    }
    if (state.state === 'received' && state.received === opts.payload) {
      console.log(`received: ${state.received}`)
      console.log(`browser: ${await browser.version()}`)
      console.error(state.log)
      return 0
    }
    console.error(`browser.js: the page did not show ${JSON.stringify(opts.payload)} (state ${state.state}, #received ${JSON.stringify(state.received)})`)
    console.error(`--- page log (#log)\n${state.log}--- browser events\n${pageLog.join('\n')}`)
    return 1
  } finally {
    await browser.close()
  }
}

setTimeout(() => die(`no result within ${TOTAL_LIMIT_MS} ms`), TOTAL_LIMIT_MS).unref()
main().then(
  (code) => process.exit(code),
  (err) => die(`${err.stack || err}`)
)

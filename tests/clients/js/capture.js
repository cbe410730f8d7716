#!/usr/bin/env node
// MQTT.js driver for scripts/capture-golden.py.
//
//   node tests/clients/js/capture.js <scenario> <port>
//
// Connects to the fake broker that capture-golden.py runs on 127.0.0.1:<port>
// and performs a fixed sequence of MQTT.js calls. The Python side records the
// exact bytes MQTT.js writes and holds the expected field values; keep the two
// in sync (every literal below appears in the manifest's "expect" entries).
//
// Scenarios: v31, v311, v5, v5-auth. Exits non-zero on any error or timeout.
'use strict'

const mqtt = require('mqtt')

const [scenario, portArg] = process.argv.slice(2)
const port = Number(portArg)
if (!scenario || !port) {
  console.error('usage: node capture.js <v31|v311|v5|v5-auth> <port>')
  process.exit(2)
}

const overall = setTimeout(() => {
  console.error(`capture.js ${scenario}: timed out`)
  process.exit(3)
}, 20000)

// Hands out 1, 2, 3, ... (the interface of MQTT.js's message id providers).
class CountingMessageIdProvider {
  constructor () { this.next = 1; this.last = 0 }
  allocate () { this.last = this.next; this.next = (this.next % 65535) + 1; return this.last }
  getLastAllocated () { return this.last }
  register (id) { return true }
  deallocate (id) {}
  clear () { this.next = 1; this.last = 0 }
}

// Resolves when the client writes a packet of the given type.
function sent (client, cmd) {
  return new Promise((resolve) => {
    const h = (packet) => {
      if (packet.cmd === cmd) {
        client.removeListener('packetsend', h)
        resolve(packet)
      }
    }
    client.on('packetsend', h)
  })
}

function connect (opts) {
  return new Promise((resolve, reject) => {
    const client = mqtt.connect({
      host: '127.0.0.1',
      port,
      protocol: 'mqtt',
      reconnectPeriod: 0,
      connectTimeout: 10000,
      // Deterministic packet ids (1, 2, 3, ...) so the manifest can state
      // them; MQTT.js's default provider starts at a random id.
      messageIdProvider: new CountingMessageIdProvider(),
      ...opts
    })
    client.once('connect', () => resolve(client))
    client.once('error', reject)
    if (opts.onClient) opts.onClient(client)
  })
}

const scenarios = {
  async v31 () {
    const c = await connect({
      protocolId: 'MQIsdp',
      protocolVersion: 3,
      clientId: 'mqttjs-v31',
      keepalive: 25,
      clean: true
    })
    await c.subscribeAsync('brokk/js/v31/#', { qos: 1 })
    await c.publishAsync('brokk/js/v31', 'hello from mqtt.js v3.1', { qos: 1 })
    await c.endAsync()
  },

  async v311 () {
    const c = await connect({
      protocolVersion: 4,
      clientId: 'mqttjs-v311',
      keepalive: 1,
      clean: true,
      username: 'js-user',
      password: 'js-pass',
      will: { topic: 'brokk/js/will', payload: 'js-gone', qos: 2, retain: true }
    })
    // The fake broker pushes a QoS 1 and a QoS 2 PUBLISH after the SUBACK;
    // MQTT.js answers with PUBACK, PUBREC and (after PUBREL) PUBCOMP.
    const pubcomp = sent(c, 'pubcomp')
    await c.subscribeAsync({
      'brokk/js/a': { qos: 0 },
      'brokk/js/b/+': { qos: 1 },
      'brokk/js/c/#': { qos: 2 }
    })
    await pubcomp
    await c.publishAsync('brokk/js/q0', 'zero', { qos: 0 })
    await c.publishAsync('brokk/js/q1', 'one', { qos: 1 })
    await c.publishAsync('brokk/js/q2', 'two', { qos: 2, retain: true })
    await c.unsubscribeAsync(['brokk/js/a', 'brokk/js/b/+'])
    await sent(c, 'pingreq') // keepalive 1 s
    await c.endAsync()
  },

  async v5 () {
    const c = await connect({
      protocolVersion: 5,
      clientId: 'mqttjs-v5',
      keepalive: 30,
      clean: true,
      properties: {
        sessionExpiryInterval: 300,
        receiveMaximum: 50,
        maximumPacketSize: 1048576,
        topicAliasMaximum: 4,
        requestResponseInformation: true,
        requestProblemInformation: false,
        userProperties: { lib: 'mqtt.js', flavour: 'v5' }
      },
      will: {
        topic: 'brokk/js5/will',
        payload: 'js5-gone',
        qos: 1,
        retain: false,
        properties: {
          willDelayInterval: 10,
          payloadFormatIndicator: true,
          messageExpiryInterval: 30,
          contentType: 'text/plain',
          responseTopic: 'brokk/js5/will-reply',
          correlationData: Buffer.from('will-corr'),
          userProperties: { w: '1' }
        }
      }
    })
    const pubcomp = sent(c, 'pubcomp')
    await c.subscribeAsync({
      'brokk/js5/a': { qos: 0, nl: true, rap: false, rh: 0 },
      'brokk/js5/b': { qos: 1, nl: false, rap: true, rh: 1 },
      'brokk/js5/c/#': { qos: 2, nl: false, rap: false, rh: 2 }
    }, { properties: { subscriptionIdentifier: 99, userProperties: { s: '1' } } })
    await pubcomp
    await c.publishAsync('brokk/js5/props', '{"js":true}', {
      qos: 1,
      properties: {
        payloadFormatIndicator: true,
        messageExpiryInterval: 120,
        contentType: 'application/json',
        responseTopic: 'brokk/js5/reply',
        correlationData: Buffer.from('js-corr'),
        userProperties: { a: '1', b: ['2', '3'] }
      }
    })
    await c.publishAsync('brokk/js5/q2', 'two', { qos: 2 })
    await c.unsubscribeAsync(['brokk/js5/a'], { properties: { userProperties: { u: 'x' } } })
    await c.endAsync({
      reasonCode: 0x04,
      properties: {
        sessionExpiryInterval: 0,
        reasonString: 'bye from mqtt.js',
        userProperties: { d: '1' }
      }
    })
  },

  // Enhanced authentication: the fake broker answers CONNECT with AUTH 0x18
  // (continue authentication); MQTT.js's handleAuth hook answers with AUTH.
  async 'v5-auth' () {
    const c = await connect({
      protocolVersion: 5,
      clientId: 'mqttjs-v5-auth',
      keepalive: 30,
      clean: true,
      properties: {
        authenticationMethod: 'BROKK-TEST',
        authenticationData: Buffer.from('client-first')
      },
      onClient (client) {
        client.handleAuth = (packet, cb) => {
          cb(null, {
            cmd: 'auth',
            reasonCode: 0x18,
            properties: {
              authenticationMethod: 'BROKK-TEST',
              authenticationData: Buffer.from('client-final')
            }
          })
        }
      }
    })
    await c.endAsync()
  }
}

const run = scenarios[scenario]
if (!run) {
  console.error(`unknown scenario ${scenario}`)
  process.exit(2)
}
run().then(() => {
  clearTimeout(overall)
  console.log(`mqtt.js ${require('mqtt/package.json').version} scenario ${scenario}: ok`)
}, (err) => {
  console.error(`capture.js ${scenario}: ${err && err.stack ? err.stack : err}`)
  process.exit(1)
})

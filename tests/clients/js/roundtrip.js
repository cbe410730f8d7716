#!/usr/bin/env node
// MQTT.js round trip for brokk's end-to-end tests (tests/e2e/outside_clients.rs).
//
//   node tests/clients/js/roundtrip.js <url> <protocolVersion 4|5> <topic>
//
// Connects to <url> (e.g. ws://127.0.0.1:PORT/mqtt), subscribes to <topic> at QoS 1,
// publishes a message to it once the SUBACK is in, and exits 0 when that message
// comes back. Exits 1 on any error, a refused subscription or after 10 s.
'use strict'

const mqtt = require('mqtt')

const [url, versionArg, topic] = process.argv.slice(2)
const protocolVersion = Number(versionArg)
if (!url || ![4, 5].includes(protocolVersion) || !topic) {
  console.error('usage: node roundtrip.js <url> <4|5> <topic>')
  process.exit(2)
}

const fail = (why) => {
  console.error(`roundtrip.js (MQTT ${protocolVersion}): ${why}`)
  process.exit(1)
}
setTimeout(() => fail('timed out'), 10000)

const payload = `MQTT.js v${protocolVersion} round trip`
const client = mqtt.connect(url, {
  protocolVersion,
  clientId: `mqttjs-${protocolVersion}-${process.pid}`,
  clean: true,
  reconnectPeriod: 0,
  connectTimeout: 5000
})

client.on('error', (err) => fail(`error: ${err.message}`))
client.on('close', () => fail('connection closed before the message came back'))
client.on('connect', () => {
  client.subscribe(topic, { qos: 1 }, (err, granted) => {
    if (err) return fail(`subscribe: ${err.message}`)
    if (!granted || granted[0].qos !== 1) return fail(`subscription refused: ${JSON.stringify(granted)}`)
    client.publish(topic, payload, { qos: 1 }, (err) => {
      if (err) fail(`publish: ${err.message}`)
    })
  })
})
client.on('message', (t, message) => {
  if (t !== topic || message.toString() !== payload) {
    return fail(`unexpected message on ${t}: ${message.toString()}`)
  }
  console.log(`received ${message.toString()}`)
  client.removeAllListeners('close')
  client.end(false, () => process.exit(0))
})

// aedes on 127.0.0.1:<port> for the tests: node aedes_broker.mjs PORT AEDES_DIR, where
// AEDES_DIR is the installed package (node_modules/aedes, outside the repository).
// Sessions live in memory (aedes' default persistence): they survive a client's drop, not
// a broker restart.  Prints "listening" once the port accepts connections.
import net from 'node:net'
import path from 'node:path'
import { pathToFileURL } from 'node:url'

const port = Number(process.argv[2])
const { Aedes } = await import(pathToFileURL(path.join(process.argv[3], 'aedes.js')).href)
const aedes = await Aedes.createBroker()
const server = net.createServer(aedes.handle)
aedes.on('clientError', (client, err) => console.log('client error', client && client.id, err.message))
aedes.on('connectionError', (client, err) => console.log('connection error', client && client.id, err.message))
aedes.on('client', (client) => console.log('client connected', client.id))
aedes.on('clientDisconnect', (client) => console.log('client disconnected', client.id))
server.listen(port, '127.0.0.1', () => console.log('listening on', port))
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => { server.close(); aedes.close(() => process.exit(0)) })
}

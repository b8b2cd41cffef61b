// Puts the node icon beside each compiled node, where Flowise looks for it
// (NodesPool resolves `icon` relative to the node's .js file).
const fs = require('fs')
const path = require('path')

const root = path.join(__dirname, '..')
const icon = path.join(root, 'src', 'nodes', 'murmur.svg')
const nodes = path.join(root, 'dist', 'nodes')
for (const dir of fs.readdirSync(nodes, { withFileTypes: true })) {
    if (dir.isDirectory()) fs.copyFileSync(icon, path.join(nodes, dir.name, 'murmur.svg'))
}

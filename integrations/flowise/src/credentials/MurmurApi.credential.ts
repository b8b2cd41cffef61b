import { INodeCredential, INodeParams } from '../lib/Interface'

class MurmurApi implements INodeCredential {
    label: string
    name: string
    version: number
    description: string
    inputs: INodeParams[]

    constructor() {
        this.label = 'Murmur API'
        this.name = 'murmurApi'
        this.version = 1.0
        this.description = 'A Murmur server and one of its API keys (create one in the Murmur dashboard or with POST /v1/api-keys)'
        this.inputs = [
            {
                label: 'Base URL',
                name: 'baseUrl',
                type: 'string',
                placeholder: 'https://murmur.example.com',
                description: 'The Murmur server, without /v1'
            },
            {
                label: 'API Key',
                name: 'apiKey',
                type: 'password'
            }
        ]
    }
}

module.exports = { credClass: MurmurApi }

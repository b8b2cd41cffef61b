// Pieces of node definitions shared by the Murmur nodes.

import { MurmurClient } from './client'
import { murmurConnection } from './flowise'
import { ICommonObject, INodeData, INodeOptionsValue, INodeParams } from './Interface'

export const CATEGORY = 'Murmur'
export const ICON = 'murmur.svg'

export const CREDENTIAL: INodeParams = {
    label: 'Connect Credential',
    name: 'credential',
    type: 'credential',
    credentialNames: ['murmurApi']
}

export async function clientFor(nodeData: INodeData, options?: ICommonObject): Promise<MurmurClient> {
    return new MurmurClient(await murmurConnection(nodeData, options))
}

/** `loadMethods.listModels`: the models this server has, marked when the plan does not allow them. */
export async function listModelOptions(nodeData: INodeData, options?: ICommonObject): Promise<INodeOptionsValue[]> {
    const client = await clientFor(nodeData, options)
    const models = await client.listModels()
    return models
        .filter((m) => m.installed || m.available)
        .map((m) => ({
            label: m.allowed ? m.id : `${m.id} (not in your plan)`,
            name: m.id,
            description: [
                m.default ? 'server default' : '',
                m.english_only ? 'English only' : 'multilingual',
                m.installed ? 'installed' : 'installed on first use'
            ]
                .filter(Boolean)
                .join(', ')
        }))
}

/** `loadMethods.listWorkflows`: the tenant's stored workflows. */
export async function listWorkflowOptions(nodeData: INodeData, options?: ICommonObject): Promise<INodeOptionsValue[]> {
    const client = await clientFor(nodeData, options)
    const workflows = await client.listWorkflows()
    return workflows.map((w) => {
        const p = w.params ?? {}
        const bits = [p.job_type, p.model, p.task, p.language, p.diarize?.enabled ? 'diarization' : '', p.separate_bgm?.enabled ? 'BGM separation' : '']
        return { label: w.name, name: w.id, description: bits.filter(Boolean).join(', ') }
    })
}

// Pieces of node definitions shared by the Murmur nodes.

import { MurmurClient } from './client'
import { murmurConnection } from './flowise'
import { checkDenyList } from './flowise'
import { ICommonObject, INodeData, INodeOptionsValue, INodeOutputsValue, INodeParams } from './Interface'

export const CATEGORY = 'Murmur'
export const ICON = 'murmur.svg'

export const CREDENTIAL: INodeParams = {
    label: 'Connect Credential',
    name: 'credential',
    type: 'credential',
    credentialNames: ['murmurApi']
}

export async function clientFor(nodeData: INodeData, options?: ICommonObject): Promise<MurmurClient> {
    const conn = await murmurConnection(nodeData, options)
    await checkDenyList(conn.baseUrl, options)
    return new MurmurClient(conn)
}

/**
 * Two outputs, as Flowise's own Custom JS Function has: `output` feeds other
 * nodes, `EndingNode` makes the node the end of a chatflow (Flowise accepts an
 * ending node outside the Chains/Agents categories only when its selected
 * output is `EndingNode`), so a chatflow of this one node answers with its
 * result.
 */
export function outputs(type: string, label: string): INodeOutputsValue[] {
    return [
        { label, name: 'output', baseClasses: ['string', 'json'] },
        { label: 'Ending Node', name: 'EndingNode', baseClasses: [type] }
    ]
}

/** As an ending node Flowise calls `init` (building the flow) and then `run`: do the work once, in `run`. */
export function skipInit(nodeData: INodeData, options?: ICommonObject): boolean {
    return nodeData.outputs?.output === 'EndingNode' && !options?.isRun
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

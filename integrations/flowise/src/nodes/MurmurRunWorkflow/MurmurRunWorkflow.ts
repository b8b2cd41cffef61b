import { AUDIO_INPUTS } from '../../lib/audio'
import { CATEGORY, clientFor, CREDENTIAL, ICON, outputs, skipInit, listWorkflowOptions } from '../../lib/common'
import { ICommonObject, INode, INodeData, INodeOutputsValue, INodeOptionsValue, INodeParams } from '../../lib/Interface'
import { OUTPUT_FORMATS, outputFormat, timeoutMs, transcribeInputs } from '../../lib/run'

class MurmurRunWorkflow_Murmur implements INode {
    label: string
    name: string
    version: number
    description: string
    type: string
    icon: string
    category: string
    baseClasses: string[]
    credential: INodeParams
    inputs: INodeParams[]
    outputs: INodeOutputsValue[]

    constructor() {
        this.label = 'Murmur Run Workflow'
        this.name = 'murmurRunWorkflow'
        this.version = 1.1
        this.type = 'MurmurRunWorkflow'
        this.icon = ICON
        this.category = CATEGORY
        this.description = 'Run one of your stored Murmur workflows (saved job settings) on an audio file'
        this.baseClasses = [this.type]
        this.credential = CREDENTIAL
        this.outputs = outputs(this.type, 'Transcript')
        this.inputs = [
            {
                label: 'Workflow',
                name: 'workflow',
                type: 'asyncOptions',
                loadMethod: 'listWorkflows',
                description: 'A workflow stored in Murmur (dashboard or POST /v1/workflows)'
            },
            ...AUDIO_INPUTS,
            {
                label: 'Output Format',
                name: 'outputFormat',
                type: 'options',
                options: OUTPUT_FORMATS,
                default: 'text'
            },
            {
                label: 'Timeout (seconds)',
                name: 'timeoutSeconds',
                type: 'number',
                default: 900,
                optional: true,
                additionalParams: true
            }
        ]
    }

    loadMethods = {
        async listWorkflows(nodeData: INodeData, options?: ICommonObject): Promise<INodeOptionsValue[]> {
            return listWorkflowOptions(nodeData, options)
        }
    }

    async init(nodeData: INodeData, _input: string, options?: ICommonObject): Promise<any> {
        if (skipInit(nodeData, options)) return
        const inputs = nodeData.inputs ?? {}
        const workflowId = String(inputs.workflow ?? '').trim()
        if (!workflowId) throw new Error('Murmur: choose a workflow in the "Workflow" input.')
        const format = outputFormat(inputs.outputFormat)
        const client = await clientFor(nodeData, options)
        return transcribeInputs(client, inputs, options, { params: {}, workflowId, format, timeoutMs: timeoutMs(inputs.timeoutSeconds) })
    }

    /** Flowise runs an ending node with `run`. */
    async run(nodeData: INodeData, input: string, options?: ICommonObject): Promise<string> {
        return this.init(nodeData, input, { ...(options ?? {}), isRun: true })
    }
}

module.exports = { nodeClass: MurmurRunWorkflow_Murmur }

import { CATEGORY, clientFor, CREDENTIAL, ICON, outputs, skipInit } from '../../lib/common'
import { ICommonObject, INode, INodeData, INodeOutputsValue, INodeParams } from '../../lib/Interface'
import { OUTPUT_FORMATS, outputFormat } from '../../lib/run'
import { jobReport } from '../../lib/status'

class MurmurJobStatus_Murmur implements INode {
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
        this.label = 'Murmur Job Status'
        this.name = 'murmurJobStatus'
        this.version = 1.0
        this.type = 'MurmurJobStatus'
        this.icon = ICON
        this.category = CATEGORY
        this.description = "A Murmur job's status and progress, and its result once it completed"
        this.baseClasses = [this.type]
        this.credential = CREDENTIAL
        this.outputs = outputs(this.type, 'Job Status (JSON)')
        this.inputs = [
            {
                label: 'Job ID',
                name: 'jobId',
                type: 'string',
                acceptVariable: true,
                placeholder: 'j_...'
            },
            {
                label: 'Include Result',
                name: 'includeResult',
                type: 'boolean',
                default: true,
                optional: true,
                description: 'Add the result when the job has completed'
            },
            {
                label: 'Result Format',
                name: 'outputFormat',
                type: 'options',
                options: OUTPUT_FORMATS,
                default: 'text',
                optional: true
            }
        ]
    }

    /** Answers the report as JSON text: `{id, status, stage, progress, error, created_at, finished_at, result?}`. */
    async init(nodeData: INodeData, _input: string, options?: ICommonObject): Promise<any> {
        if (skipInit(nodeData, options)) return
        const inputs = nodeData.inputs ?? {}
        const include = inputs.includeResult === undefined || inputs.includeResult === '' ? true : String(inputs.includeResult) === 'true'
        const client = await clientFor(nodeData, options)
        const report = await jobReport(client, String(inputs.jobId ?? ''), include ? outputFormat(inputs.outputFormat) : 'none')
        return JSON.stringify(report, null, 2)
    }

    /** Flowise runs an ending node with `run`. */
    async run(nodeData: INodeData, input: string, options?: ICommonObject): Promise<string> {
        return this.init(nodeData, input, { ...(options ?? {}), isRun: true })
    }
}

module.exports = { nodeClass: MurmurJobStatus_Murmur }

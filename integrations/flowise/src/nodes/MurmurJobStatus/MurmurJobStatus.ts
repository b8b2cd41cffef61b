import { CATEGORY, clientFor, CREDENTIAL, ICON } from '../../lib/common'
import { ICommonObject, INode, INodeData, INodeParams } from '../../lib/Interface'
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

    constructor() {
        this.label = 'Murmur Job Status'
        this.name = 'murmurJobStatus'
        this.version = 1.0
        this.type = 'MurmurJobStatus'
        this.icon = ICON
        this.category = CATEGORY
        this.description = "A Murmur job's status and progress, and its result once it completed"
        this.baseClasses = [this.type, 'json', 'string']
        this.credential = CREDENTIAL
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
        const inputs = nodeData.inputs ?? {}
        const include = inputs.includeResult === undefined || inputs.includeResult === '' ? true : String(inputs.includeResult) === 'true'
        const client = await clientFor(nodeData, options)
        const report = await jobReport(client, String(inputs.jobId ?? ''), include ? outputFormat(inputs.outputFormat) : 'none')
        return JSON.stringify(report, null, 2)
    }
}

module.exports = { nodeClass: MurmurJobStatus_Murmur }

// Murmur as an agent tool. An agent cannot hand a tool an audio upload: what
// it can pass are strings it has seen, so the tool takes the id of a file
// already uploaded to Murmur (`file_id`, e.g. from the dashboard, an earlier
// step or the user) or the http(s) address of one (`audio_url`, fetched by
// the Murmur server) to transcribe it, or the id of a job (`job_id`) to
// report its status and result. The node's inputs fix the credential and the job
// settings the agent may not change (model, diarization, ...).

import { StructuredTool } from '@langchain/core/tools'
import { z } from 'zod/v3'
import { MurmurClient } from '../../lib/client'
import { CATEGORY, clientFor, CREDENTIAL, ICON, listModelOptions } from '../../lib/common'
import { MurmurError } from '../../lib/errors'
import { ICommonObject, INode, INodeData, INodeOptionsValue, INodeParams } from '../../lib/Interface'
import {
    audioUrl,
    BEAM_INPUT,
    OUTPUT_FORMATS,
    OutputFormat,
    outputFormat,
    paramsFromInputs,
    runOnFile,
    timeoutMs,
    transcribeUrl
} from '../../lib/run'
import { jobReport } from '../../lib/status'

export const murmurToolSchema = z.object({
    file_id: z
        .string()
        .optional()
        .describe('Id of an audio file already uploaded to Murmur (starts with "f_"): transcribe it and answer the transcript'),
    audio_url: z
        .string()
        .optional()
        .describe('http(s) address of an audio or video file: Murmur fetches it, transcribes it and answers the transcript'),
    job_id: z
        .string()
        .optional()
        .describe('Id of a Murmur job (starts with "j_"): answer its status, progress and, once completed, its result')
})

export type MurmurToolInput = z.infer<typeof murmurToolSchema>

export interface MurmurToolSettings {
    params: Record<string, any>
    format: OutputFormat
    timeoutMs: number
    ctx: Record<string, any>
}

export class MurmurTranscribeTool extends StructuredTool {
    name = 'murmur_transcribe'
    description =
        'Speech to text with Murmur. Give file_id (an audio file uploaded to Murmur) or audio_url (the address of ' +
        'an audio file on the web) to get its transcript, or job_id (a Murmur job) to get its status and result. ' +
        'Give exactly one of them.'
    schema = murmurToolSchema

    private readonly client: MurmurClient
    private readonly settings: MurmurToolSettings

    constructor(client: MurmurClient, settings: MurmurToolSettings, fields?: { name?: string; description?: string; returnDirect?: boolean }) {
        super()
        this.client = client
        this.settings = settings
        if (fields?.name) this.name = fields.name
        if (fields?.description) this.description = fields.description
        if (fields?.returnDirect) this.returnDirect = true
    }

    /** Errors come back as text the agent (and its user) can read, not as a crash of the flow. */
    protected async _call(arg: MurmurToolInput): Promise<string> {
        const fileId = arg.file_id?.trim()
        const url = arg.audio_url?.trim()
        const jobId = arg.job_id?.trim()
        if ([fileId, url, jobId].filter(Boolean).length !== 1) {
            return 'Error: give exactly one of file_id or audio_url (to transcribe) or job_id (to check a job).'
        }
        let checkedUrl: string | undefined
        try {
            checkedUrl = audioUrl(url)
        } catch (e) {
            return `Error: ${(e as Error).message}`
        }
        try {
            if (jobId) return JSON.stringify(await jobReport(this.client, jobId, this.settings.format))
            const request = { params: this.settings.params, format: this.settings.format, timeoutMs: this.settings.timeoutMs }
            const run = checkedUrl
                ? await transcribeUrl(this.client, checkedUrl!, request, this.settings.ctx)
                : await runOnFile(this.client, fileId!, request, this.settings.ctx)
            return run.output
        } catch (e) {
            if (e instanceof MurmurError) return `Error: ${e.message}`
            throw e
        }
    }
}

/** Same rule as Flowise's `getBaseClasses`: the class names up the prototype chain. */
function baseClassesOf(cls: any): string[] {
    const out: string[] = []
    const skip = ['BaseLangChain', 'Serializable']
    let c = cls
    for (;;) {
        const parent = Object.getPrototypeOf(c)
        if (!parent || parent === Object || !parent.name) break
        c = parent
        if (!skip.includes(c.name)) out.push(c.name)
    }
    return out
}

class MurmurTranscribeTool_Tools implements INode {
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
        this.label = 'Murmur Transcribe Tool'
        this.name = 'murmurTranscribeTool'
        this.version = 1.2
        this.type = 'MurmurTranscribeTool'
        this.icon = ICON
        this.category = 'Tools'
        this.description = 'Lets an agent transcribe audio files stored in Murmur or on the web, and check Murmur jobs'
        this.baseClasses = [this.type, 'Tool', ...baseClassesOf(MurmurTranscribeTool)]
        this.credential = CREDENTIAL
        this.inputs = [
            {
                label: 'Model',
                name: 'model',
                type: 'asyncOptions',
                loadMethod: 'listModels',
                optional: true
            },
            {
                label: 'Task',
                name: 'task',
                type: 'options',
                options: [
                    { label: 'Transcribe', name: 'transcribe' },
                    { label: 'Translate to English', name: 'translate' }
                ],
                default: 'transcribe',
                optional: true
            },
            { label: 'Language', name: 'language', type: 'string', optional: true, placeholder: 'en' },
            { label: 'Voice Activity Detection', name: 'vad', type: 'boolean', default: true, optional: true },
            { label: 'Word Timestamps', name: 'wordTimestamps', type: 'boolean', default: false, optional: true },
            { label: 'Speaker Diarization', name: 'diarize', type: 'boolean', default: false, optional: true },
            { label: 'Background Music Separation', name: 'separateBgm', type: 'boolean', default: false, optional: true },
            { label: 'Output Format', name: 'outputFormat', type: 'options', options: OUTPUT_FORMATS, default: 'text', optional: true },
            BEAM_INPUT,
            {
                label: 'Tool Name',
                name: 'toolName',
                type: 'string',
                default: 'murmur_transcribe',
                optional: true,
                additionalParams: true
            },
            {
                label: 'Tool Description',
                name: 'toolDescription',
                type: 'string',
                rows: 3,
                optional: true,
                additionalParams: true
            },
            { label: 'Return Direct', name: 'returnDirect', type: 'boolean', default: false, optional: true, additionalParams: true },
            { label: 'Timeout (seconds)', name: 'timeoutSeconds', type: 'number', default: 900, optional: true, additionalParams: true }
        ]
    }

    loadMethods = {
        async listModels(nodeData: INodeData, options?: ICommonObject): Promise<INodeOptionsValue[]> {
            return listModelOptions(nodeData, options)
        }
    }

    async init(nodeData: INodeData, _input: string, options?: ICommonObject): Promise<any> {
        const inputs = nodeData.inputs ?? {}
        const { params, ctx } = paramsFromInputs(inputs)
        const client = await clientFor(nodeData, options)
        return new MurmurTranscribeTool(
            client,
            { params, ctx, format: outputFormat(inputs.outputFormat), timeoutMs: timeoutMs(inputs.timeoutSeconds) },
            {
                name: String(inputs.toolName || '').trim() || undefined,
                description: String(inputs.toolDescription || '').trim() || undefined,
                returnDirect: inputs.returnDirect === true || inputs.returnDirect === 'true'
            }
        )
    }
}

module.exports = { nodeClass: MurmurTranscribeTool_Tools, MurmurTranscribeTool, murmurToolSchema }

import { AUDIO_INPUTS } from '../../lib/audio'
import { CATEGORY, clientFor, CREDENTIAL, ICON, outputs, skipInit, listModelOptions } from '../../lib/common'
import { ICommonObject, INode, INodeData, INodeOutputsValue, INodeOptionsValue, INodeParams } from '../../lib/Interface'
import { BEAM_INPUT, layoutNeedsWords, OUTPUT_FORMATS, outputFormat, paramsFromInputs, SUBTITLE_INPUTS, subtitleLayout, timeoutMs, transcribeInputs } from '../../lib/run'

class MurmurTranscribe_Murmur implements INode {
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
        this.label = 'Murmur Transcribe'
        this.name = 'murmurTranscribe'
        this.version = 1.3
        this.type = 'MurmurTranscribe'
        this.icon = ICON
        this.category = CATEGORY
        this.description = 'Transcribe or translate an audio file with Murmur speech-to-text'
        this.baseClasses = [this.type]
        this.credential = CREDENTIAL
        this.outputs = outputs(this.type, 'Transcript')
        this.inputs = [
            ...AUDIO_INPUTS,
            {
                label: 'Model',
                name: 'model',
                type: 'asyncOptions',
                loadMethod: 'listModels',
                optional: true,
                description: "Whisper model; empty uses the server's default"
            },
            {
                label: 'Task',
                name: 'task',
                type: 'options',
                options: [
                    { label: 'Transcribe', name: 'transcribe', description: 'Text in the spoken language' },
                    { label: 'Translate to English', name: 'translate' }
                ],
                default: 'transcribe'
            },
            {
                label: 'Language',
                name: 'language',
                type: 'string',
                placeholder: 'en',
                optional: true,
                description: 'Spoken language as an ISO 639-1 code; empty detects it'
            },
            {
                label: 'Voice Activity Detection',
                name: 'vad',
                type: 'boolean',
                default: true,
                optional: true,
                description: 'Skip silence and non-speech before transcribing'
            },
            {
                label: 'Word Timestamps',
                name: 'wordTimestamps',
                type: 'boolean',
                default: false,
                optional: true,
                description: 'Time every word (start, end, probability) in the JSON output; on by itself with diarization'
            },
            {
                label: 'Speaker Diarization',
                name: 'diarize',
                type: 'boolean',
                default: false,
                optional: true,
                description: 'Label who speaks when (premium plans)'
            },
            {
                label: 'Background Music Separation',
                name: 'separateBgm',
                type: 'boolean',
                default: false,
                optional: true,
                description: 'Remove background music before transcribing (premium plans)'
            },
            {
                label: 'Output Format',
                name: 'outputFormat',
                type: 'options',
                options: OUTPUT_FORMATS,
                default: 'text'
            },
            BEAM_INPUT,
            ...SUBTITLE_INPUTS,
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
        async listModels(nodeData: INodeData, options?: ICommonObject): Promise<INodeOptionsValue[]> {
            return listModelOptions(nodeData, options)
        }
    }

    async init(nodeData: INodeData, _input: string, options?: ICommonObject): Promise<any> {
        if (skipInit(nodeData, options)) return
        const inputs = nodeData.inputs ?? {}
        const format = outputFormat(inputs.outputFormat)
        const { params, ctx } = paramsFromInputs(inputs)
        // The layout applies to subtitles; one laid out from words has them timed.
        const subtitles = format === 'srt' || format === 'vtt' ? subtitleLayout(inputs) : {}
        if (layoutNeedsWords(subtitles)) params.word_timestamps = true
        const client = await clientFor(nodeData, options)
        return transcribeInputs(client, inputs, options, { params, format, subtitles, timeoutMs: timeoutMs(inputs.timeoutSeconds) }, ctx)
    }

    /** Flowise runs an ending node with `run`. */
    async run(nodeData: INodeData, input: string, options?: ICommonObject): Promise<string> {
        return this.init(nodeData, input, { ...(options ?? {}), isRun: true })
    }
}

module.exports = { nodeClass: MurmurTranscribe_Murmur }

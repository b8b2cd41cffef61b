// How these nodes reach Flowise's own helpers (credential lookup, stored
// files) without depending on the `flowise-components` package at build time.
//
// Inside Flowise the node files live in
// node_modules/flowise-components/dist/nodes/..., so `require('flowise-components')`
// resolves to the running Flowise's own package, whose index exports
// `getCredentialData` (reads and decrypts a credential from Flowise's database
// through `options.appDataSource`) and `getFileFromStorage` (reads an uploaded
// file from Flowise's blob storage). Outside Flowise (tests, scripts) that
// require fails, and the caller must inject a resolver instead: see
// `MurmurHostAdapter`.

import { ICommonObject, INodeData } from './Interface'

/** Same shape as Flowise's `getCredentialData`. */
export type GetCredentialData = (selectedCredentialId: string, options: ICommonObject) => Promise<ICommonObject>
/** Same shape as Flowise's `getFileFromStorage`. */
export type GetFileFromStorage = (file: string, ...paths: string[]) => Promise<Buffer>

/**
 * What a host other than Flowise passes in `options.murmurHost` to stand in
 * for Flowise's helpers. Each function must answer with the shapes Flowise's
 * own would (a decrypted credential object; a file's bytes).
 */
export interface MurmurHostAdapter {
    getCredentialData?: GetCredentialData
    getFileFromStorage?: GetFileFromStorage
    checkDenyList?: (url: string) => Promise<void>
}

let components: ICommonObject | null | undefined

/** The running Flowise's `flowise-components`, or null when not inside Flowise. */
export function flowiseComponents(): ICommonObject | null {
    if (components !== undefined) return components
    try {
        // Lazy on purpose: a real dependency only inside Flowise.
        // eslint-disable-next-line @typescript-eslint/no-var-requires
        components = require('flowise-components') as ICommonObject
    } catch {
        components = null
    }
    return components
}

function adapter(options: ICommonObject | undefined): MurmurHostAdapter | undefined {
    return options?.murmurHost as MurmurHostAdapter | undefined
}

export function resolveGetCredentialData(options: ICommonObject | undefined): GetCredentialData {
    const injected = adapter(options)?.getCredentialData
    if (injected) return injected
    const fc = flowiseComponents()
    if (fc && typeof fc.getCredentialData === 'function') return fc.getCredentialData as GetCredentialData
    throw new Error(
        'Murmur: cannot read the "Murmur API" credential: this node is not running inside Flowise ' +
            "(flowise-components is not installed) and no options.murmurHost.getCredentialData was given"
    )
}

export function resolveGetFileFromStorage(options: ICommonObject | undefined): GetFileFromStorage {
    const injected = adapter(options)?.getFileFromStorage
    if (injected) return injected
    const fc = flowiseComponents()
    if (fc && typeof fc.getFileFromStorage === 'function') return fc.getFileFromStorage as GetFileFromStorage
    throw new Error(
        'Murmur: the audio input is a Flowise stored file (FILE-STORAGE::...), which only Flowise can read: ' +
            'this node is not running inside Flowise and no options.murmurHost.getFileFromStorage was given'
    )
}

/**
 * Inside Flowise, applies its outgoing-request deny list (HTTP_SECURITY_CHECK,
 * HTTP_DENY_LIST; loopback and private addresses by default) to the Murmur
 * URL, as Flowise's own HTTP nodes do with `secureFetch`.
 */
export async function checkDenyList(url: string, options: ICommonObject | undefined): Promise<void> {
    const check = adapter(options)?.checkDenyList ?? (flowiseComponents()?.checkDenyList as ((u: string) => Promise<void>) | undefined)
    if (!check) return
    try {
        await check(url)
    } catch (e: any) {
        throw new Error(
            `Murmur: Flowise's HTTP security check refuses the Murmur Base URL ${url} (${e?.message ?? e}). ` +
                'For a Murmur server on a private or loopback address, the Flowise operator must allow it (HTTP_SECURITY_CHECK=false, or a narrower HTTP_DENY_LIST).'
        )
    }
}

/** Same rule as Flowise's `getCredentialParam`: a node input overrides the credential's field. */
export function getCredentialParam(paramName: string, credentialData: ICommonObject, nodeData: INodeData): any {
    return nodeData.inputs?.[paramName] ?? credentialData?.[paramName] ?? ''
}

export interface MurmurConnection {
    baseUrl: string
    apiKey: string
}

/** Reads the node's "Murmur API" credential the way Flowise nodes do. */
export async function murmurConnection(nodeData: INodeData, options: ICommonObject | undefined): Promise<MurmurConnection> {
    const credentialId = nodeData.credential ?? ''
    if (!credentialId) {
        throw new Error('Murmur: no "Murmur API" credential is selected on this node; connect one (Base URL and API key).')
    }
    const getCredentialData = resolveGetCredentialData(options)
    const data = (await getCredentialData(credentialId, options ?? {})) ?? {}
    const baseUrl = String(getCredentialParam('baseUrl', data, nodeData) || '').trim()
    const apiKey = String(getCredentialParam('apiKey', data, nodeData) || '').trim()
    if (!baseUrl) throw new Error('Murmur: the "Murmur API" credential has no Base URL (e.g. https://murmur.example.com).')
    if (!/^https?:\/\//i.test(baseUrl)) throw new Error(`Murmur: the credential's Base URL must start with http:// or https:// (got "${baseUrl}").`)
    if (!apiKey) throw new Error('Murmur: the "Murmur API" credential has no API key.')
    return { baseUrl: baseUrl.replace(/\/+$/, ''), apiKey }
}

// The tenant's files as the page knows them: loaded from the API, named in
// the job list and offered by the job form.

import { getJSON } from './api.js';
import { emit, state } from './state.js';

export async function loadFiles() {
  const { items } = await getJSON('/v1/files?limit=200');
  for (const f of items) state.files.set(f.id, f);
  emit('files');
}

/** A file just stored (uploaded or fetched from a URL). */
export function addFile(record) {
  state.files.set(record.id, record);
  emit('files', record.id);
  emit('usage');
}

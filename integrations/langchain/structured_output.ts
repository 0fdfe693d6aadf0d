// withStructuredOutput for ChatKvfold: function calling (one bound tool, its call forced) or a reply
// constrained to the schema itself, parsed (and validated, for zod and standard schemas) by
// LangChain's own parsers.

import {
  assembleStructuredOutputPipeline,
  type BaseChatModel,
  createContentParser,
  createFunctionCallingParser,
  isInteropZodSchema,
  isSerializableSchema,
  type Runnable,
  type StructuredOutputMethodOptions,
  toJsonSchema,
} from "./_deps.ts";

/** The pipeline `ChatKvfold.withStructuredOutput` returns. */
export function structuredOutput(
  // deno-lint-ignore no-explicit-any
  model: BaseChatModel<any, any>,
  // deno-lint-ignore no-explicit-any
  schema: any,
  config: StructuredOutputMethodOptions<boolean> = {},
): Runnable {
  const method = config.method ?? "functionCalling";
  if (method !== "functionCalling" && method !== "jsonSchema" && method !== "jsonMode") {
    throw new TypeError(`Cannot give structured output: unknown method ${JSON.stringify(method)}`);
  }
  const typed = isInteropZodSchema(schema) || isSerializableSchema(schema);
  const jsonSchema = (typed ? toJsonSchema(schema) : schema) as Record<string, unknown>;
  const name = config.name ??
    (!typed && typeof schema.name === "string" && schema.parameters ? schema.name : undefined) ?? "extract";
  const parameters = !typed && schema.parameters && typeof schema.name === "string"
    ? schema.parameters
    : jsonSchema;
  const traced = { ls_structured_output_format: { kwargs: { method }, schema: jsonSchema } };
  const includeRaw = config.includeRaw === true;
  const runName = includeRaw ? "StructuredOutputRunnable" : "StructuredOutput";
  if (method === "functionCalling") {
    const description = (typeof jsonSchema.description === "string" ? jsonSchema.description : undefined) ??
      "A function available to call.";
    const llm = model.bindTools!(
      [{ type: "function", function: { name, description, parameters } }],
      { tool_choice: name, ...traced } as never,
    );
    return assembleStructuredOutputPipeline(
      llm,
      createFunctionCallingParser(schema, name),
      includeRaw,
      runName,
    );
  }
  const llm = model.withConfig(
    { jsonSchema: method === "jsonMode" ? "json" : parameters, ...traced } as never,
  );
  return assembleStructuredOutputPipeline(llm, createContentParser(schema), includeRaw, runName);
}

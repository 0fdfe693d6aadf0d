#!/usr/bin/env node
/**
 * The `kvfold` command for Node.js and Bun: the same commands as `deno task kvfold`.
 *
 * @module
 */

import "./runtime.ts";
import { main } from "../cli/main.ts";

process.exit(await main(process.argv.slice(2)));

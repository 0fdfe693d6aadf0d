/**
 * The package version `kvfold --version` prints: the `version` of deno.json and package.json
 * (tests/cli_help_test.ts checks that all three agree).
 *
 * @module
 */

/** This package's version. */
export const VERSION = "0.1.0";

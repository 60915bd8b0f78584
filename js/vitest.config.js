import { defineConfig } from "vitest/config";

// Local times ("as of", blotter times) are the browser's: run in a zone that is not UTC, so the
// tests show the conversion happens. The test workers inherit it.
process.env.TZ = "America/New_York";

export default defineConfig({
  test: {
    environment: "jsdom",
    include: ["test/**/*.test.js"],
    // Each test starts from a clean mock state (matchMedia stubs, spies).
    restoreMocks: true,
    unstubGlobals: true,
  },
});

import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    environment: "jsdom",
    include: ["test/**/*.test.js"],
    // Each test starts from a clean mock state (matchMedia stubs, spies).
    restoreMocks: true,
    unstubGlobals: true,
  },
});

import { defineConfig } from 'vitest/config';

// Integration tests touch real images, loop devices and Apptainer: files run one at a time on
// this 2-core machine, with generous timeouts (never asserting on wall-clock time).
export default defineConfig({
  test: {
    testTimeout: 180_000,
    hookTimeout: 300_000,
    fileParallelism: false,
    include: ['test/**/*.test.ts', 'packages/*/src/**/*.test.ts'],
    reporters: ['default', './test/summary-reporter.ts'],
    globalSetup: ['./test/global-setup.ts'],
  },
});

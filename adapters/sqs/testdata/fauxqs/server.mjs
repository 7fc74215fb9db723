// Test server for the adapters/sqs tests: the fauxqs SQS/SNS emulator (not
// Amazon SQS), listening on loopback only. fauxqs's own CLI listens on every
// interface, so this starts it through its buildApp export instead.
//
//   FAUXQS_PORT=0 node server.mjs
//
// prints "fauxqs listening on http://127.0.0.1:PORT" once it accepts
// requests, and exits when its standard input closes, so a test process that
// dies without cleaning up does not leave it running.
import { buildApp } from "fauxqs";

const port = Number.parseInt(process.env.FAUXQS_PORT ?? "0", 10);
const app = buildApp({ logger: process.env.FAUXQS_LOGGER === "true" });
const address = await app.listen({ port, host: "127.0.0.1" });
console.log(`fauxqs listening on ${address}`);

const stop = async () => {
  try {
    await app.close();
  } finally {
    process.exit(0);
  }
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
process.stdin.on("end", stop);
process.stdin.on("close", stop);
process.stdin.resume();

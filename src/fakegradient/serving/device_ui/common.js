// What the page's modules share: their errors, and a JSON-object test.

export class DeviceError extends Error {} // a one-line message for the user
export class Unreachable extends DeviceError {} // no further request can succeed

export function isObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

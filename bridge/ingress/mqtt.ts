// The device MQTT endpoint lives in ./mqtt/ (one module per packet kind); this is its entry point.
export { startMqttIngress, type MqttIngress, type MqttIngressOptions } from './mqtt/server.ts';

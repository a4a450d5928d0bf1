// @peculiar/x509 (through tsyringe) needs the Reflect metadata polyfill loaded
// before it; importing x509 only through this module guarantees the order.
import 'reflect-metadata';
export * from '@peculiar/x509';

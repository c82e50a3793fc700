// The one module that owns the SIF format: parsing, rewriting, layers wrapped for registries,
// and the embedded ext3 overlay (info, check, repair, resize, create, embed, extract, locks).
export * from './format';
export * from './layer';
export * from './overlay';
export * from './rewrite';

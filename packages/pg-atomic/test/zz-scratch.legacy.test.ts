function legacy(target: object, key: string, desc: PropertyDescriptor): void {
  expect(typeof target).toBe('object'); expect(key).toBe('m'); expect(typeof desc.value).toBe('function');
}
class A { @legacy m(): number { return 1; } }
it('legacy decorators', () => { expect(new A().m()).toBe(1); });

function logged<T extends (...args: never[]) => unknown>(value: T, context: ClassMethodDecoratorContext): T {
  expect(context.kind).toBe('method');
  return value;
}
class A { @logged m(): number { return 1; } }
it('tc39 decorators', () => { expect(new A().m()).toBe(1); });
